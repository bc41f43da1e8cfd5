"""The Serve application on a private local Ray cluster: every endpoint over HTTP and gRPC with
real tiny model folders, answers checked against calling the models directly, multiplexing
eviction, batching, bad input (4xx, and the replica keeps serving), the bearer token, the
OpenAPI schema, the shipped Serve config, the gRPC stubs, and the web page in headless Chromium."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import requests

from fs_ray.config import ConfigError, load_config
from fs_ray.protos import fs_ray_serve_pb2 as pb
from fs_ray.protos import fs_ray_serve_pb2_grpc as pb_grpc
from fs_ray.run_configs import ServeConfig
from fs_ray.serving.inference import Generator, MaskedLM, TaskModel

from .conftest import REPO, free_port
from .model_folders import classifier_folder, gpt2_folder, mlm_folder, tagger_folder

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_models")
    tasks = root / "tasks"
    return {
        "mlm": mlm_folder(root / "erlangshen-tiny"),
        "gpt2": gpt2_folder(root / "wenzhong-tiny"),
        "tasks": tasks,
        "senti": classifier_folder(tasks / "senti", ["负面", "正面"], task="chnsenticorp"),
        "nli": classifier_folder(tasks / "nli", ["contradiction", "entailment", "neutral"], task="ocnli",
                                 shape="pair", seed=1),
        "topic": classifier_folder(tasks / "topic", ["体育", "财经", "科技", "娱乐"], task="tnews", seed=2),
        "ner": tagger_folder(tasks / "ner", NER_LABELS, seed=3),
        "token_file": _write(root / "token.txt", TOKEN + "\n"),
    }


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def server(ray_local, folders):
    from ray import serve

    from fs_ray.serving.app import build_app, start_serve

    http_port, grpc_port = free_port(), free_port()
    common = [
        f"http_port={http_port}", f"grpc_port={grpc_port}",
        "replicas.num_cpus=0", "replicas.gateway_cpus=0", "replicas.torch_threads=1",
        "replicas.min_replicas=1", "replicas.max_replicas=1", "replicas.max_task_models=2",
        "batching.max_batch_size=8", "batching.batch_wait_timeout_s=0.05",
        "limits.max_items=64", "limits.max_input_chars=200",
    ]
    cfg = load_config(ServeConfig, None, [
        *common, f"models.fill_mask={folders['mlm']}", f"models.tasks={folders['tasks']}",
        f"models.generate={folders['gpt2']}", "models.default_task_model=senti",
    ])
    locked = load_config(ServeConfig, None, [
        *common, "name=locked", "route_prefix=/locked", f"models.fill_mask={folders['mlm']}",
        f"auth_token_file={folders['token_file']}",
    ])
    start_serve(cfg)
    serve.run(build_app(cfg), name=cfg.name, route_prefix=cfg.route_prefix)
    serve.run(build_app(locked), name=locked.name, route_prefix=locked.route_prefix)
    url = f"http://127.0.0.1:{http_port}"
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    yield {"url": url, "cfg": cfg, "stub": pb_grpc.FsRayStub(channel), "serve": serve}
    channel.close()
    serve.shutdown()


@pytest.fixture(scope="module")
def direct(folders):
    """The same folders, called in this process without Ray."""
    return {
        "mlm": MaskedLM(str(folders["mlm"])),
        "senti": TaskModel(str(folders["senti"])),
        "nli": TaskModel(str(folders["nli"])),
        "ner": TaskModel(str(folders["ner"])),
        "gpt2": Generator(str(folders["gpt2"])),
    }


def post(server, route, body, headers=None, **kw):
    return requests.post(f"{server['url']}{route}", json=body, headers=headers, timeout=60, **kw)


def _close(a, b, tol=1e-4):
    return abs(a - b) <= tol


# ---------------------------------------------------------------------------------------------
def test_http_answers_match_the_models_called_directly(server, direct):
    r = post(server, "/v1/fill-mask", {"text": ["今天天气很[MASK]。", "[MASK]京是中[MASK]的首都"], "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    want = direct["mlm"].fill_mask(["今天天气很[MASK]。", "[MASK]京是中[MASK]的首都"], 3)
    assert body["model"] == "erlangshen-tiny"
    assert [len(res["masks"]) for res in body["results"]] == [1, 2]
    for res, exp in zip(body["results"], want, strict=True):
        for mask, exp_mask in zip(res["masks"], exp, strict=True):
            assert [g["token"] for g in mask] == [t for t, _ in exp_mask]
            assert all(_close(g["score"], s) for g, (_, s) in zip(mask, exp_mask, strict=True))

    r = post(server, "/v1/classify", {"text": "这家酒店的服务很好。"})
    assert r.status_code == 200, r.text
    body = r.json()
    label, scores = direct["senti"].classify(["这家酒店的服务很好。"])[0]
    assert body["model"] == "senti" and body["results"][0]["label"] == label
    assert sorted(s["label"] for s in body["results"][0]["scores"]) == ["正面", "负面"]
    assert all(_close(a["score"], b) for a, (_, b) in zip(body["results"][0]["scores"], scores, strict=True))

    r = post(server, "/v1/classify", {"text": ["他在睡觉", "天很蓝"], "text_pair": ["他醒着", "天是蓝的"],
                                      "model": "nli"})
    assert r.status_code == 200, r.text
    want = direct["nli"].classify(["他在睡觉", "天很蓝"], ["他醒着", "天是蓝的"])
    assert [x["label"] for x in r.json()["results"]] == [w[0] for w in want]

    r = post(server, "/v1/zero-shot", {"text": "这家酒店的服务很好。", "labels": ["正面", "负面", "中性"]})
    assert r.status_code == 200, r.text
    ranked = direct["mlm"].zero_shot("这家酒店的服务很好。", ["正面", "负面", "中性"])
    assert r.json()["label"] == ranked[0][0]
    assert _close(sum(s["score"] for s in r.json()["scores"]), 1.0)

    text = "张三在北京大学读书，李四在上海工作。"
    r = post(server, "/v1/ner", {"text": text, "model": "ner"})
    assert r.status_code == 200, r.text
    ents = r.json()["results"][0]["entities"]
    assert ents == direct["ner"].tag([text])[0]
    assert all(text[e["start"] : e["end"]] == e["text"] for e in ents)

    gen = {"prompt": "今天天气", "max_new_tokens": 8, "temperature": 0.9, "top_p": 0.9, "seed": 7}
    first, again = post(server, "/v1/generate", gen), post(server, "/v1/generate", gen)
    assert first.status_code == 200, first.text
    assert first.json()["text"] == again.json()["text"] == direct["gpt2"].generate("今天天气", 8, 0.9, 0.9, 7)
    greedy = post(server, "/v1/generate", {"prompt": "今天天气", "max_new_tokens": 5})
    assert greedy.json()["text"] == direct["gpt2"].generate("今天天气", 5)


def test_grpc_answers_match_http(server):
    stub = server["stub"]
    app = (("application", "fs_ray"),)  # two applications run here, so gRPC calls name theirs
    reply = stub.FillMask(pb.FillMaskRequest(texts=["今天天气很[MASK]。"], top_k=2), metadata=app)
    http = post(server, "/v1/fill-mask", {"text": "今天天气很[MASK]。", "top_k": 2}).json()
    assert [g.token for g in reply.results[0].masks[0].guesses] == [g["token"] for g in http["results"][0]["masks"][0]]

    reply = stub.Classify(pb.ClassifyRequest(texts=["好", "差"]), metadata=(*app, ("multiplexed_model_id", "topic")))
    http = post(server, "/v1/classify", {"text": ["好", "差"], "model": "topic"}).json()
    assert reply.model == "topic" and [r.label for r in reply.results] == [r["label"] for r in http["results"]]

    reply = stub.ZeroShot(pb.ZeroShotRequest(text="股市大涨", labels=["财经", "体育"]), metadata=app)
    assert reply.label == post(server, "/v1/zero-shot", {"text": "股市大涨", "labels": ["财经", "体育"]}).json()["label"]

    reply = stub.Ner(pb.NerRequest(texts=["王五去了广州"], model="ner"), metadata=app)
    http = post(server, "/v1/ner", {"text": "王五去了广州", "model": "ner"}).json()
    assert [(e.type, e.start, e.end) for e in reply.results[0].entities] == [
        (e["type"], e["start"], e["end"]) for e in http["results"][0]["entities"]
    ]

    reply = stub.Generate(pb.GenerateRequest(prompt="我们", max_new_tokens=4, temperature=0.8, seed=3), metadata=app)
    assert reply.text == post(server, "/v1/generate", {"prompt": "我们", "max_new_tokens": 4, "temperature": 0.8,
                                                       "seed": 3}).json()["text"]
    ids = {m.id for m in stub.Models(pb.ModelsRequest(), metadata=app).models}
    assert {"erlangshen-tiny", "wenzhong-tiny", "senti", "nli", "topic", "ner"} <= ids

    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(pb.ClassifyRequest(texts=["好"], model="nope"), metadata=app)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.FillMask(pb.FillMaskRequest(texts=["  "]), metadata=app)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.FillMask(pb.FillMaskRequest(texts=["[MASK]"]), metadata=(("application", "locked"),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    ok = stub.FillMask(pb.FillMaskRequest(texts=["[MASK]"]),
                       metadata=(("application", "locked"), ("authorization", f"Bearer {TOKEN}")))
    assert len(ok.results) == 1


def test_bad_input_gets_the_right_4xx_and_the_replica_keeps_serving(server):
    cases = [
        ("/v1/classify", {"text": ""}, 422, "text"),
        ("/v1/classify", {"text": ["好", "   "]}, 422, "text[1]"),
        ("/v1/classify", {"text": 123}, 422, "text"),
        ("/v1/classify", {"text": ["好", 5]}, 422, "text"),
        ("/v1/classify", {"text": "长" * 201}, 413, "200"),
        ("/v1/classify", {"text": ["好"] * 10_000}, 413, "10000 texts"),
        ("/v1/classify", {"text": "好", "model": "nope"}, 404, "nope"),
        ("/v1/classify", {"text": "好", "model": "ner"}, 422, "/v1/ner"),
        ("/v1/classify", {"text": "好", "model": "nli"}, 422, "text_pair"),
        ("/v1/classify", {"text": ["a", "b"], "text_pair": ["c"], "model": "nli"}, 422, "text_pair"),
        ("/v1/classify", {}, 422, "text"),
        ("/v1/fill-mask", {"text": "没有掩码"}, 422, "[MASK]"),
        ("/v1/fill-mask", {"text": "[MASK]", "top_k": 0}, 422, "top_k"),
        ("/v1/zero-shot", {"text": "好", "labels": ["正面"]}, 422, "labels"),
        ("/v1/zero-shot", {"text": "好", "labels": ["正面", "正面"]}, 422, "differ"),
        ("/v1/generate", {"prompt": "你好", "max_new_tokens": 10_000}, 413, "max_new_tokens"),
        ("/v1/generate", {"prompt": "你好", "top_p": 0}, 422, "top_p"),
        ("/v1/ner", {"text": "好", "model": "senti"}, 422, "/v1/classify"),
    ]
    for route, body, status, needle in cases:
        r = post(server, route, body)
        assert r.status_code == status, (route, body, r.status_code, r.text)
        assert needle in r.json()["error"], (route, body, r.text)
        assert set(r.json()) == {"error", "field"} and r.json()["field"], r.text  # one shape everywhere
    for raw in ("{not json", b'{"text": "\xff\xfe"}'):  # malformed JSON, invalid UTF-8
        r = requests.post(f"{server['url']}/v1/classify", data=raw, timeout=30,
                          headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 422) and set(r.json()) == {"error", "field"}, r.text
        assert r.json()["field"] == "body" and "malformed JSON" in r.json()["error"], r.text
    r = post(server, "/v1/classify", {"text": "好"}, headers={"serve_multiplexed_model_id": "missing"})
    assert r.status_code == 404
    # and every model deployment still answers
    assert post(server, "/v1/classify", {"text": "还能用吗"}).status_code == 200
    assert post(server, "/v1/fill-mask", {"text": "还[MASK]用吗"}).status_code == 200
    ready = requests.get(f"{server['url']}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_bearer_token_guards_inference_but_not_health(server, folders):
    url = f"{server['url']}/locked"
    body = {"text": "今天[MASK]气"}
    assert requests.post(f"{url}/v1/fill-mask", json=body, timeout=30).status_code == 401
    wrong = requests.post(f"{url}/v1/fill-mask", json=body, headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401 and wrong.headers.get("www-authenticate") == "Bearer"
    assert requests.get(f"{url}/v1/models", timeout=30).status_code == 401
    ok = requests.post(f"{url}/v1/fill-mask", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert ok.status_code == 200, ok.text
    assert requests.get(f"{url}/healthz", timeout=30).json() == {"status": "ok"}
    assert requests.get(f"{url}/readyz", timeout=30).status_code == 200
    # the open application needs no token
    assert post(server, "/v1/fill-mask", body).status_code == 200


def test_multiplexing_keeps_at_most_max_task_models_and_evicts_the_least_recent(server):
    from ray import serve

    handle = serve.get_deployment_handle("TaskModels", app_name="fs_ray")
    before = handle.info.remote().result()
    for model in ("senti", "topic", "nli"):
        body = {"text": "好", "model": model} | ({"text_pair": "坏"} if model == "nli" else {})
        assert post(server, "/v1/classify", body).status_code == 200
    info = handle.info.remote().result()
    assert len(info["loaded"]) <= 2 and "nli" in info["loaded"]
    # senti was used longest ago, so the third model evicted it; using it again reloads it
    assert info["evictions"].get("senti", 0) > before["evictions"].get("senti", 0)
    assert post(server, "/v1/classify", {"text": "好", "model": "senti"}).status_code == 200
    after = handle.info.remote().result()
    assert after["loads"]["senti"] == info["loads"]["senti"] + 1
    assert len(after["loaded"]) <= 2


def test_concurrent_requests_are_batched(server):
    from ray import serve

    handle = serve.get_deployment_handle("TaskModels", app_name="fs_ray")
    before = handle.info.remote().result()["batch_sizes"]
    texts = [f"第{i}条评论，还不错。" for i in range(32)]
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda t: post(server, "/v1/classify", {"text": t, "model": "topic"}), texts))
    assert all(r.status_code == 200 for r in replies)
    after = handle.info.remote().result()["batch_sizes"]
    grown = {int(k): after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}
    assert sum(k * n for k, n in grown.items()) >= 32
    assert max(grown) > 1, f"no request shared a forward pass: {grown}"
    assert max(grown) <= server["cfg"].batching.max_batch_size


def test_openapi_schema_and_health(server):
    schema = requests.get(f"{server['url']}/openapi.json", timeout=30).json()
    for route in ("/v1/fill-mask", "/v1/classify", "/v1/zero-shot", "/v1/ner", "/v1/generate"):
        assert "post" in schema["paths"][route]
    assert "ClassifyRequest" in schema["components"]["schemas"]
    assert requests.get(f"{server['url']}/healthz", timeout=30).json() == {"status": "ok"}
    ready = requests.get(f"{server['url']}/readyz", timeout=30).json()
    assert set(ready["deployments"]) == {"fill_mask", "tasks", "generate"}
    page = requests.get(server["url"] + "/", timeout=30)
    assert page.status_code == 200 and "fs_ray" in page.text and "v1/" in page.text


def test_web_page_in_headless_chromium(server, direct, folders, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 900, "height": 700})
        page.goto(server["url"] + "/")
        page.fill("#text", "今天天气很[MASK]。")
        page.click("#go")
        page.wait_for_function("document.getElementById('result').dataset.model !== undefined", timeout=30_000)
        shown = page.inner_text("#result")
        shot = tmp_path / "fill_mask.png"
        page.screenshot(path=str(shot), full_page=True)

        page.select_option("#mode", "classify")
        page.select_option("#model", "topic")
        page.fill("#text", "球队昨晚赢了比赛")
        page.click("#go")
        page.wait_for_function("document.getElementById('result').dataset.model === 'topic'", timeout=30_000)
        classified = page.inner_text("#result")
        offered = page.eval_on_selector_all("#mode option:not([disabled])", "os => os.map(o => o.value)")

        # a server with only a classifier: the page offers classification alone, and selects it
        only = browser.new_page()
        only.route("**/v1/models", lambda route: route.fulfill(json={"models": [
            {"id": "senti", "kind": "classifier", "task": "eprstmt", "labels": ["neg", "pos"]}]}))
        only.goto(server["url"] + "/")
        only.wait_for_function("document.querySelector('#mode option[value=generate]').disabled")
        offered_alone = only.eval_on_selector_all("#mode option:not([disabled])", "os => os.map(o => o.value)")
        selected_alone = only.eval_on_selector("#mode", "s => s.value")
        browser.close()
    assert offered == ["fill-mask", "classify", "zero-shot", "ner", "generate"]  # this server serves all
    assert offered_alone == ["classify"] and selected_alone == "classify"
    top = direct["mlm"].fill_mask(["今天天气很[MASK]。"], 5)[0][0][0][0]
    assert top in shown
    assert classified.startswith("label: " + TaskModel(str(folders["topic"])).classify(["球队昨晚赢了比赛"])[0][0])
    # the screenshot is a real rendering: a PNG of the page size with more than a blank background
    from PIL import Image

    image = Image.open(shot).convert("L")
    assert image.size[0] == 900 and image.size[1] >= 500
    dark = sum(1 for px in image.getdata() if px < 128)
    assert dark > 2000, "the page rendered (nearly) nothing"


# ---------------------------------------------------------------------------------------------
# no cluster needed
# ---------------------------------------------------------------------------------------------
def test_serve_config_refuses_batches_that_cannot_fill_and_bad_folders(tmp_path, folders):
    with pytest.raises(ConfigError, match="max_ongoing_requests"):
        load_config(ServeConfig, None, ["models.fill_mask=x", "batching.max_batch_size=32",
                                        "batching.max_ongoing_requests=8"])
    with pytest.raises(ConfigError, match="at least one of"):
        load_config(ServeConfig, None, [])
    from fs_ray.serving.app import build_app

    with pytest.raises(FileNotFoundError, match=r"models\.fill_mask"):
        build_app(load_config(ServeConfig, None, [f"models.fill_mask={tmp_path}"]))
    with pytest.raises(ValueError, match="not a masked LM"):
        build_app(load_config(ServeConfig, None, [f"models.fill_mask={folders['senti']}"]))
    with pytest.raises(ValueError, match="default_task_model"):
        build_app(load_config(ServeConfig, None, [f"models.tasks={folders['tasks']}", "models.default_task_model=x"]))


def test_overlong_texts_are_cut_when_configured():
    from types import SimpleNamespace

    from fs_ray.serving.app import Gateway, ServeError

    texts = Gateway.func_or_class._texts  # the gateway's own check, without a replica around it
    cut = SimpleNamespace(cfg=load_config(ServeConfig, None, ["models.fill_mask=x", "limits.max_input_chars=5",
                                                              "limits.overlong=truncate"]))
    assert texts(cut, ["一二三四五六七", "短"]) == ["一二三四五", "短"]
    refuse = SimpleNamespace(cfg=load_config(ServeConfig, None, ["models.fill_mask=x", "limits.max_input_chars=5"]))
    with pytest.raises(ServeError) as err:
        texts(refuse, "一二三四五六七")
    assert err.value.status == 413


def test_discovery_finds_fine_tuning_exports_in_a_run_directory(tmp_path):
    from fs_ray.serving.app import discover_task_models

    run = tmp_path / "run"
    classifier_folder(run / "eprstmt" / "head" / "split_0" / "export", ["Negative", "Positive"], task="eprstmt")
    tagger_folder(run / "msra_ner" / "head" / "split_all" / "export", NER_LABELS)
    mlm_folder(run / "pretrained")  # not a task model: left out
    # a checkpoint is not a model, even one holding a complete Hugging Face folder
    classifier_folder(run / "train" / "run-eprstmt-head-0" / "checkpoint_step00000016" / "hf", ["N", "P"])
    found = discover_task_models(str(run))
    assert set(found) == {"eprstmt-head-split_0", "msra_ner-head-split_all"}
    assert found["eprstmt-head-split_0"]["labels"] == ["Negative", "Positive"]
    assert found["msra_ner-head-split_all"]["kind"] == "tagger"


def test_shipped_ray_serve_config_validates_and_builds(folders):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from fs_ray.serving.app import app_builder

    raw = yaml.safe_load((REPO / "serve" / "ray_serve.yaml").read_text(encoding="utf-8"))
    schema = ServeDeploySchema.model_validate(raw)
    assert schema.grpc_options.grpc_servicer_functions == [
        "fs_ray.protos.fs_ray_serve_pb2_grpc.add_FsRayServicer_to_server"
    ]
    (app,) = schema.applications
    assert app.import_path == "fs_ray.serving.app:app_builder"
    args = dict(app.args)
    args["set"] = [f"models.fill_mask={folders['mlm']}", f"models.tasks={folders['tasks']}"]
    built = app_builder(args)
    assert type(built).__name__ == "Application"


def test_grpc_stubs_match_the_proto(tmp_path):
    proto = "fs_ray/protos/fs_ray_serve.proto"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO), f"--python_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}", str(REPO / proto)],
        check=True,
    )
    for name in ("fs_ray_serve_pb2.py", "fs_ray_serve_pb2_grpc.py", "fs_ray_serve_pb2.pyi"):
        fresh = (tmp_path / "fs_ray" / "protos" / name).read_text()
        assert fresh == (REPO / "fs_ray" / "protos" / name).read_text(), f"{name} is stale: regenerate it"


def test_serve_deploy_command_help_and_bad_config():
    out = subprocess.run([sys.executable, "serve/deploy.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and "models.tasks" in out.stdout and "batching.max_batch_size" in out.stdout
    bad = subprocess.run([sys.executable, "serve/deploy.py", "--set", "batching.max_batch_size=0"],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "max_batch_size" in bad.stderr


def test_seq2seq_generation_is_seeded_and_greedy_is_deterministic(tmp_path):
    from .model_folders import t5_folder

    gen = Generator(str(t5_folder(tmp_path / "randeng-tiny")))
    assert gen.kind == "seq2seq"
    a = gen.generate("北京是中国的首都", 6, temperature=1.0, top_p=0.9, seed=11)
    assert a == gen.generate("北京是中国的首都", 6, temperature=1.0, top_p=0.9, seed=11)
    assert gen.generate("北京", 5) == gen.generate("北京", 5)
    assert isinstance(a, str)


def test_a_unimc_fine_tuned_export_classifies_with_its_verbalizer(tmp_path):
    from .model_folders import unimc_folder

    folder = unimc_folder(tmp_path / "unimc", ["Negative", "Positive"], {"Negative": "差评", "Positive": "好评"},
                          question="这条评论的态度是？")
    model = TaskModel(str(folder))
    assert model.kind == "classifier" and model.method == "unimc"
    label, scores = model.classify(["服务很好"])[0]
    # the same UniMC scoring as zero-shot with the verbalized options, mapped back to the labels
    ranked = MaskedLM(str(folder), 64).zero_shot("服务很好", ["差评", "好评"], "这条评论的态度是？")
    back = {"差评": "Negative", "好评": "Positive"}
    assert label == back[ranked[0][0]]
    assert [(back[o], pytest.approx(p, abs=1e-5)) for o, p in ranked] == scores


def test_a_pretraining_export_is_named_after_its_run():
    from fs_ray.serving.app import model_name

    assert model_name("/runs/quickstart/erlangshen-tiny-20261129/export/") == "erlangshen-tiny-20261129"
    assert model_name("/models/erlangshen-tiny") == "erlangshen-tiny"
