"""Generation serving on a private local Ray cluster: fine-tuned generation exports through the
multiplexed task deployment (batched prompts, the card's prompt and lengths), streaming over HTTP
(server-sent events) and gRPC (server streaming) with tokens arriving before the end, a client
that disconnects stopping the generation, and bad generation requests refused with 4xx. Correction
(/v1/correct) is served by the same application: a pretrained Bigan (models.correct) and fine-tuned
correctors (an MLM corrector, a Bigan rewriter) multiplexed with the other task models."""

from __future__ import annotations

import json
import time

import grpc
import pytest
import requests

from fs_ray.config import load_config
from fs_ray.protos import fs_ray_serve_pb2 as pb
from fs_ray.protos import fs_ray_serve_pb2_grpc as pb_grpc
from fs_ray.run_configs import ServeConfig
from fs_ray.serving.inference import Corrector, Generator

from .conftest import free_port
from .model_folders import bigan_folder, classifier_folder, corrector_folder, generation_folder, gpt2_folder

PROMPT = "今天天气很好"
LIMIT = 2000  # limits.max_new_tokens: a stream nobody stops runs about 30 s on one thread


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen_models")
    tasks = root / "tasks"
    return {
        # 16 ms a token on one thread, and greedy from PROMPT never meets its end token
        "slow": gpt2_folder(root / "wenzhong-slow", n_embd=512, n_layer=8, n_head=8, n_positions=LIMIT + 64),
        "tasks": tasks,
        "title": generation_folder(tasks / "title"),
        "senti": classifier_folder(tasks / "senti", ["负面", "正面"], task="chnsenticorp"),
        "fix": corrector_folder(tasks / "fix", "mlm_correct", max_len=16),  # long texts go in pieces
        "rewrite": corrector_folder(tasks / "rewrite", "clm"),
        "bigan": bigan_folder(root / "bigan-denoise"),
    }


@pytest.fixture(scope="module")
def server(ray_local, folders):
    from ray import serve

    from fs_ray.serving.app import build_app, start_serve

    http_port, grpc_port = free_port(), free_port()
    cfg = load_config(ServeConfig, None, [
        f"http_port={http_port}", f"grpc_port={grpc_port}", "name=gen", "route_prefix=/",
        "replicas.num_cpus=0", "replicas.gateway_cpus=0", "replicas.torch_threads=1",
        "replicas.min_replicas=1", "replicas.max_replicas=1", "replicas.max_task_models=2",
        f"models.generate={folders['slow']}", f"models.tasks={folders['tasks']}", "models.default_task_model=senti",
        f"models.correct={folders['bigan']}",
        f"limits.max_new_tokens={LIMIT}", "limits.max_beams=3",
    ])  # fmt: skip
    start_serve(cfg)
    serve.run(build_app(cfg), name=cfg.name, route_prefix=cfg.route_prefix)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    yield {
        "url": f"http://127.0.0.1:{http_port}",
        "stub": pb_grpc.FsRayStub(channel),
        "app": (("application", "gen"),),
    }
    channel.close()
    serve.shutdown()


def post(server, body, **kw):
    return requests.post(f"{server['url']}/v1/generate", json=body, timeout=120, **kw)


def events(response):
    """(kind, data, seconds since the request) of each server-sent event, as they arrive."""
    start = time.monotonic()
    kind = "message"
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: "):
            yield kind, json.loads(line[len("data: ") :]), time.monotonic() - start
            kind = "message"


def stream_stats(server) -> dict:
    ready = requests.get(f"{server['url']}/readyz", timeout=30).json()
    return ready["deployments"]["generate"]


def test_fine_tuned_generators_are_served_by_model_id_with_their_task_card(server, folders):
    direct = Generator(str(folders["title"]))
    sources = ["北京大学的研究人员提出了一种新的方法", "上海今天下雨"]
    r = post(server, {"prompt": sources, "model": "title"})
    assert r.status_code == 200, r.text
    body = r.json()
    # the card's prompt template, max_target_len (12) and decoding (2 beams, no_repeat_ngram_size 2)
    assert body["model"] == "title" and body["texts"] == direct.generate_batch(sources, 12, direct.settings())
    assert direct.generate_batch(sources, 12, {"num_beams": 2}) == body["texts"]
    assert body["text"] == body["texts"][0]
    listed = {
        m["id"]: m["kind"] for m in requests.get(f"{server['url']}/v1/models", timeout=30).json()["models"]
    }
    assert listed["title"] == listed["wenzhong-slow"] == "generator" and listed["senti"] == "classifier"
    # the multiplexing header picks it too, and beams are the request's to choose
    beams = post(
        server, {"prompt": sources[0], "num_beams": 3}, headers={"serve_multiplexed_model_id": "title"}
    )
    assert beams.status_code == 200, beams.text
    assert beams.json()["text"] == direct.generate_batch(sources[:1], 12, direct.settings(num_beams=3))[0]


def test_http_stream_sends_tokens_as_they_come_and_ends_with_the_whole_text(server, folders):
    whole = post(server, {"prompt": PROMPT, "max_new_tokens": 150}).json()["text"]
    with post(server, {"prompt": PROMPT, "max_new_tokens": 150, "stream": True}, stream=True) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        got = list(events(r))
    pieces = [(d, t) for kind, d, t in got if kind == "message"]
    (done,) = [(d, t) for kind, d, t in got if kind == "done"]
    assert len(pieces) > 20
    assert pieces[0][1] < 0.5 * done[1], (pieces[0][1], done[1])  # the first piece came long before the end
    assert "".join(d["text"] for d, _ in pieces) == done[0]["text"] == whole  # greedy: same text either way
    assert done[0]["tokens"] == 150 and done[0]["model"] == "wenzhong-slow"


def test_a_client_that_disconnects_stops_the_generation(server):
    before = stream_stats(server)
    with post(server, {"prompt": PROMPT, "max_new_tokens": LIMIT, "stream": True}, stream=True) as r:
        it = events(r)
        next(it), next(it)  # two pieces, then the client goes away
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = stream_stats(server)
        if now["streams_cancelled"] > before["streams_cancelled"]:
            break
        time.sleep(0.5)
    assert now["streams_cancelled"] == before["streams_cancelled"] + 1, now
    assert now["streams_finished"] == before["streams_finished"], now
    time.sleep(1)  # tokens already in flight when the client left settle
    stopped_at = stream_stats(server)["last_stream_tokens"]
    assert stopped_at < LIMIT / 4, now  # it stopped soon after the client left, not at the limit
    time.sleep(2)
    assert stream_stats(server)["last_stream_tokens"] == stopped_at  # and generates nothing more


def test_grpc_stream_matches_the_unary_reply(server):
    stub, app = server["stub"], server["app"]
    request = pb.GenerateRequest(prompt=PROMPT, max_new_tokens=40)
    unary = stub.Generate(request, metadata=app)
    chunks = list(stub.GenerateStream(request, metadata=app))
    assert len(chunks) > 5 and chunks[-1].tokens == 40
    assert "".join(c.text for c in chunks) == unary.text and {c.model for c in chunks} == {"wenzhong-slow"}
    # the title model's card decodes with 2 beams; a stream is token by token, so greedy
    titled = list(stub.GenerateStream(pb.GenerateRequest(prompt="上海今天下雨", model="title"), metadata=app))
    greedy = stub.Generate(
        pb.GenerateRequest(prompt="上海今天下雨", model="title", num_beams=1), metadata=app
    )
    assert "".join(c.text for c in titled) == greedy.text
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(pb.GenerateRequest(prompt=PROMPT, temperature=9.0), metadata=app)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "temperature" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GenerateStream(pb.GenerateRequest(prompt=PROMPT, max_new_tokens=LIMIT + 1), metadata=app))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_new_tokens" in err.value.details()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"prompt": PROMPT, "max_new_tokens": LIMIT + 1}, 413, "max_new_tokens"),
        ({"prompt": PROMPT, "num_beams": 4}, 413, "num_beams"),
        ({"prompt": PROMPT, "num_beams": 2, "stream": True}, 422, "num_beams"),
        ({"prompt": [PROMPT, PROMPT], "stream": True}, 422, "prompt"),
        ({"prompt": PROMPT, "model": "nope"}, 404, "model"),
        ({"prompt": PROMPT, "model": "senti"}, 422, "model"),
        ({"prompt": "   "}, 422, "prompt"),
        ({"prompt": "\u200b"}, 422, "prompt"),  # no tokens: refused in the replica, still a 422
        ({"prompt": PROMPT, "temperature": -1}, 422, "temperature"),
    ],
)
def test_bad_generation_requests_are_refused_naming_the_field(server, body, status, field):
    r = post(server, body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and field in r.json()["error"]


def test_the_web_page_streams_generated_text_and_shows_corrections(server, folders):
    from playwright.sync_api import sync_playwright

    whole = post(server, {"prompt": PROMPT, "model": "wenzhong-slow"}).json()["text"]  # 32 tokens, greedy
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        page = browser.new_page()
        page.goto(server["url"] + "/")
        page.select_option("#mode", "generate")
        page.wait_for_function("document.querySelectorAll('#model option').length >= 2")
        choices = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
        page.select_option("#model", "wenzhong-slow")
        page.fill("#text", PROMPT)
        # count every rendering of the result while it streams
        page.evaluate("""() => { window.renders = [];
            new MutationObserver(() => window.renders.push(document.getElementById('result').textContent))
              .observe(document.getElementById('result'), {childList: true, characterData: true, subtree: true}); }""")
        page.click("#go")
        page.wait_for_function("document.getElementById('result').dataset.done === '1'", timeout=60_000)
        shown = page.inner_text("#result")
        renders = page.evaluate("window.renders")
        # correction: the corrected text, then each change with its offset
        page.select_option("#mode", "correct")
        page.wait_for_function("document.querySelectorAll('#model option').length >= 3")
        correctors = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
        page.select_option("#model", "fix")
        page.fill("#text", "他的成积很好")
        page.click("#go")
        page.wait_for_function("document.getElementById('result').dataset.model === 'fix'", timeout=60_000)
        corrected = page.inner_text("#result")
        browser.close()
    (fix,) = Corrector(str(folders["fix"])).correct(["他的成积很好"])
    assert set(correctors) == {"fix", "rewrite", "bigan-denoise"}
    assert corrected.splitlines()[0] == fix["text"]
    assert len(corrected.splitlines()) == 1 + max(1, len(fix["changes"]))
    assert {"title", "wenzhong-slow"} <= set(choices)  # generators only: no classifier offered here
    assert "senti" not in choices
    assert shown == whole
    growing = [r for r in renders if r and whole.startswith(r)]
    assert len(set(growing)) >= 5, renders  # piece by piece, not all at once


# ---- correction ---------------------------------------------------------------------------------
WRONG = ["我们今天去公园完，天气很好，大家都很高心。", "他的成积很好"]


def correct(server, body, **kw):
    return requests.post(f"{server['url']}/v1/correct", json=body, timeout=120, **kw)


def test_correctors_are_served_as_they_run_in_process_with_their_changes(server, folders):
    from fs_ray.correction import edits

    for model_id in ("fix", "rewrite"):
        r = correct(server, {"text": WRONG, "model": model_id})
        assert r.status_code == 200, r.text
        assert r.json() == {"model": model_id, "results": Corrector(str(folders[model_id])).correct(WRONG)}
    # the MLM corrector reads 14 characters at a time (max_len 16): a longer text is corrected in
    # pieces and comes back whole, one output character per input character
    (fixed,) = correct(server, {"text": WRONG[0], "model": "fix"}).json()["results"]
    assert len(fixed["text"]) == len(WRONG[0]) > 14
    assert fixed["changes"] == edits(WRONG[0], fixed["text"])
    assert [c["original"] for c in fixed["changes"]] == [WRONG[0][c["position"]] for c in fixed["changes"]]
    # no model named: the pretrained Bigan of models.correct; the multiplexing header picks a task model
    plain = correct(server, {"text": WRONG[1]}).json()
    assert plain["model"] == "bigan-denoise"
    assert plain["results"] == Corrector(str(folders["bigan"])).correct(WRONG[1:])
    header = correct(server, {"text": WRONG[1]}, headers={"serve_multiplexed_model_id": "fix"}).json()
    assert header["model"] == "fix"
    listed = {m["id"]: m["kind"] for m in requests.get(f"{server['url']}/v1/models", timeout=30).json()["models"]}
    assert listed["fix"] == listed["rewrite"] == listed["bigan-denoise"] == "corrector"
    # gRPC: the same answers
    reply = server["stub"].Correct(pb.CorrectRequest(texts=WRONG, model="fix"), metadata=server["app"])
    http = correct(server, {"text": WRONG, "model": "fix"}).json()
    assert reply.model == "fix"
    assert [r.text for r in reply.results] == [r["text"] for r in http["results"]]
    assert [[(c.position, c.original, c.corrected) for c in r.changes] for r in reply.results] == [
        [(c["position"], c["original"], c["corrected"]) for c in r["changes"]] for r in http["results"]
    ]
    with pytest.raises(grpc.RpcError) as err:
        server["stub"].Correct(pb.CorrectRequest(texts=WRONG, model="title"), metadata=server["app"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "/v1/generate" in err.value.details()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"text": ""}, 422, "text"),
        ({"text": ["好", " "]}, 422, "text[1]"),
        ({"text": [1, 2]}, 422, "text"),
        ({"text": "好" * 513}, 413, "text"),
        ({"text": ["好"] * 65}, 413, "text"),
        ({"text": "好", "model": "nope"}, 404, "model"),
        ({"text": "好", "model": "senti"}, 422, "model"),  # a classifier does not correct
        ({"model": "fix"}, 422, "text"),
    ],
)
def test_bad_correction_requests_are_refused_naming_the_field(server, body, status, field):
    r = correct(server, body)
    assert r.status_code == status, r.text
    assert field in r.json()["field"] and r.json()["field"] in r.json()["error"]
