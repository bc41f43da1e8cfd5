"""Taiyi serving on a private local Ray cluster: /v1/image/embed, /v1/text/embed and
/v1/image/classify over HTTP (JSON with base64 images, and multipart uploads) and gRPC, answers
checked against the export called directly; bad images (not an image, truncated, too large, a
decompression bomb, bad base64) refused with a 4xx naming the problem while the replica keeps
serving; and the web page's image upload in headless Chromium with a CJK font (a screenshot check
that Chinese renders as glyphs, not boxes)."""

from __future__ import annotations

import base64
import io

import grpc
import numpy as np
import pytest
import requests

from fs_ray.config import load_config
from fs_ray.data.digits import png
from fs_ray.protos import fs_ray_serve_pb2 as pb
from fs_ray.protos import fs_ray_serve_pb2_grpc as pb_grpc
from fs_ray.run_configs import ServeConfig
from fs_ray.serving.inference import ImageText

from .conftest import free_port
from .model_folders import DIGITS, taiyi_folder

MAX_IMAGES = 4
MAX_IMAGE_MB = 0.05  # 52,428 bytes: sklearn's china.jpg (~196 KB) is over it


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    """Real scans (UCI digits), real photos (scikit-learn's sample JPEGs), and broken images."""
    from PIL import Image
    from sklearn.datasets import load_digits, load_sample_image

    digits = load_digits()
    scans = {  # 8x8 PNGs exactly as fs_ray.data.digits writes the training set's
        f"digit{label}": png(digits.images[int(np.flatnonzero(digits.target == label)[0])]) for label in (3, 7)
    }
    photo = io.BytesIO()
    Image.fromarray(load_sample_image("flower.jpg")).resize((120, 90)).save(photo, "JPEG", quality=90)
    big = io.BytesIO()
    Image.fromarray(load_sample_image("china.jpg")).save(big, "JPEG", quality=95)
    bomb = io.BytesIO()
    Image.new("1", (9500, 9500)).save(bomb, "PNG")  # 90 M pixels in a few KB
    return {**scans, "photo": photo.getvalue(), "big": big.getvalue(), "bomb": bomb.getvalue()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return taiyi_folder(tmp_path_factory.mktemp("taiyi_serve") / "taiyi-digits")


@pytest.fixture(scope="module")
def direct(folder):
    return ImageText(str(folder))


@pytest.fixture(scope="module")
def server(ray_local, folder):
    from ray import serve

    from fs_ray.serving.app import build_app, start_serve

    http_port, grpc_port = free_port(), free_port()
    cfg = load_config(ServeConfig, None, [
        f"http_port={http_port}", f"grpc_port={grpc_port}", "name=taiyi", "route_prefix=/",
        "replicas.num_cpus=0", "replicas.gateway_cpus=0", "replicas.torch_threads=1",
        "replicas.min_replicas=1", "replicas.max_replicas=1", f"models.image_text={folder}",
        f"limits.max_images={MAX_IMAGES}", f"limits.max_image_mb={MAX_IMAGE_MB}", "limits.max_labels=12",
    ])  # fmt: skip
    start_serve(cfg)
    serve.run(build_app(cfg), name=cfg.name, route_prefix=cfg.route_prefix)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    yield {"url": f"http://127.0.0.1:{http_port}", "stub": pb_grpc.FsRayStub(channel), "app": (("application", "taiyi"),)}
    channel.close()
    serve.shutdown()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def post(server, route, **kw):
    return requests.post(f"{server['url']}{route}", timeout=60, **kw)


def _close(a, b, tol=1e-5) -> bool:
    return np.allclose(np.asarray(a), np.asarray(b), atol=tol)


def test_embeddings_and_zero_shot_over_http_match_the_export_called_directly(server, direct, images):
    scans = [images["digit3"], images["digit7"], images["photo"]]
    # JSON with base64 (a data: URL too) and multipart uploads give the same vectors
    r = post(server, "/v1/image/embed", json={"image": [b64(scans[0]), "data:image/png;base64," + b64(scans[1]),
                                                        b64(scans[2])]})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    want = direct.embed_images(scans)
    assert body["model"] == "taiyi-digits" and body["dim"] == 64 and len(body["embeddings"]) == 3
    assert _close(body["embeddings"], want)
    assert _close(np.linalg.norm(body["embeddings"], axis=1), 1.0)
    files = [("image", (f"{i}.png", data, "image/png")) for i, data in enumerate(scans)]
    multipart = post(server, "/v1/image/embed", files=files)
    assert multipart.status_code == 200, multipart.text
    assert _close(multipart.json()["embeddings"], want)

    r = post(server, "/v1/text/embed", json={"text": ["一张手写数字七的图片", "数字 3"]})
    assert r.status_code == 200, r.text
    assert _close(r.json()["embeddings"], direct.embed_texts(["一张手写数字七的图片", "数字 3"]))

    # no labels: the export's own zero-shot classes and templates
    r = post(server, "/v1/image/classify", json={"image": [b64(scans[0]), b64(scans[1])]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    expected = direct.classify(scans[:2])
    assert [res["label"] for res in results] == [label for label, _ in expected]
    for res, (_, ranked) in zip(results, expected, strict=True):
        assert [s["label"] for s in res["scores"]] == [label for label, _ in ranked]
        assert _close([s["score"] for s in res["scores"]], [p for _, p in ranked])
        assert sorted(s["label"] for s in res["scores"]) == sorted(DIGITS)
        assert abs(sum(s["score"] for s in res["scores"]) - 1) < 1e-4
    # the request's labels and templates, as a multipart form (labels comma separated)
    form = {"labels": "猫,狗，花", "templates": "一张{}的照片\n{}"}
    r = post(server, "/v1/image/classify", files=[("image", ("f.jpg", images["photo"], "image/jpeg"))], data=form)
    assert r.status_code == 200, r.text
    (label, ranked), = direct.classify([images["photo"]], ["猫", "狗", "花"], ["一张{}的照片", "{}"])
    assert r.json()["results"][0]["label"] == label
    assert [s["label"] for s in r.json()["results"][0]["scores"]] == [lb for lb, _ in ranked]

    listed = requests.get(f"{server['url']}/v1/models", timeout=30).json()["models"]
    assert listed == [{"id": "taiyi-digits", "kind": "image_text", "task": "image-embed, text-embed, image-classify",
                       "labels": DIGITS}]  # fmt: skip
    ready = requests.get(f"{server['url']}/readyz", timeout=30).json()
    assert ready["ready"] and ready["deployments"]["image_text"]["image_size"] == 16
    schema = requests.get(f"{server['url']}/openapi.json", timeout=30).json()
    content = schema["paths"]["/v1/image/classify"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)


def test_grpc_answers_match_http(server, images):
    stub, app = server["stub"], server["app"]
    scans = [images["digit3"], images["digit7"]]
    reply = stub.ImageEmbed(pb.ImageEmbedRequest(images=scans), metadata=app)
    http = post(server, "/v1/image/embed", json={"image": [b64(x) for x in scans]}).json()
    assert reply.model == "taiyi-digits" and reply.dim == 64
    assert _close([list(e.values) for e in reply.embeddings], http["embeddings"])

    reply = stub.TextEmbed(pb.TextEmbedRequest(texts=["数字九"]), metadata=app)
    assert _close(list(reply.embeddings[0].values), post(server, "/v1/text/embed", json={"text": "数字九"}).json()["embeddings"][0])

    reply = stub.ImageClassify(pb.ImageClassifyRequest(images=scans, labels=["三", "七"], templates=["数字{}"]),
                               metadata=app)  # fmt: skip
    http = post(server, "/v1/image/classify",
                json={"image": [b64(x) for x in scans], "labels": ["三", "七"], "templates": ["数字{}"]}).json()  # fmt: skip
    assert [r.label for r in reply.results] == [r["label"] for r in http["results"]]
    assert _close([s.score for s in reply.results[0].scores], [s["score"] for s in http["results"][0]["scores"]])
    assert "taiyi-digits" in {m.id for m in stub.Models(pb.ModelsRequest(), metadata=app).models}

    for request, code, words in [
        (pb.ImageEmbedRequest(images=[b"GIF89a not really"]), grpc.StatusCode.INVALID_ARGUMENT, "truncated_image"),
        (pb.ImageEmbedRequest(images=[b"hello"]), grpc.StatusCode.INVALID_ARGUMENT, "not_an_image"),
        (pb.ImageEmbedRequest(images=[images["big"]]), grpc.StatusCode.RESOURCE_EXHAUSTED, "limits.max_image_mb"),
        (pb.ImageEmbedRequest(), grpc.StatusCode.INVALID_ARGUMENT, "no image"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            stub.ImageEmbed(request, metadata=app)
        assert err.value.code() == code and words in err.value.details(), err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.ImageClassify(pb.ImageClassifyRequest(images=scans[:1], labels=["三"]), metadata=app)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "labels" in err.value.details()


def test_bad_images_get_a_4xx_naming_the_problem_and_the_replica_keeps_serving(server, images):
    png = images["digit7"]
    json_cases = [
        ({"image": b64(b"plain text, not an image")}, 422, "image", "not_an_image"),
        ({"image": b64(png[: len(png) // 2])}, 422, "image", "truncated_image"),
        ({"image": [b64(png), b64(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)]}, 422, "image[1]", "truncated_image"),
        ({"image": b64(images["big"])}, 413, "image", "limits.max_image_mb"),
        ({"image": b64(images["bomb"])}, 413, "image", "image_too_large"),
        ({"image": "%%% not base64 %%%"}, 422, "image", "base64"),
        ({"image": 42}, 422, "image", "base64 string"),
        ({"image": []}, 422, "image", "no image"),
        ({"image": [b64(png)] * (MAX_IMAGES + 1)}, 413, "image", f"limit is {MAX_IMAGES}"),
        ({"text": "no image"}, 422, "image", "required"),
    ]
    for body, status, field, words in json_cases:
        r = post(server, "/v1/image/embed", json=body)
        assert r.status_code == status, (body if len(str(body)) < 200 else field, r.text)
        assert r.json()["field"] == field and words in r.json()["error"], r.text
    label_cases = [
        ({"labels": ["猫"]}, 422, "labels", "at least two"),
        ({"labels": ["猫", "猫"]}, 422, "labels", "differ"),
        ({"labels": ["猫", ""]}, 422, "labels[1]", "empty"),
        ({"labels": [str(i) for i in range(13)]}, 413, "labels", "limits.max_labels"),
        ({"labels": ["猫", "狗"], "templates": ["一张照片"]}, 422, "templates[0]", "{}"),
        ({"labels": "猫,狗"}, 422, "labels", "list of strings"),
    ]
    for extra, status, field, words in label_cases:
        r = post(server, "/v1/image/classify", json={"image": b64(png), **extra})
        assert r.status_code == status, (extra, r.text)
        assert r.json()["field"] == field and words in r.json()["error"], r.text
    # multipart: a file that is not an image, a text field where the file should be; other bodies
    r = post(server, "/v1/image/classify", files=[("image", ("x.png", b"GIF89a...", "image/png"))])
    assert r.status_code == 422 and r.json()["field"] == "image" and "truncated_image" in r.json()["error"]
    r = post(server, "/v1/image/classify", files={"labels": (None, "猫,狗")}, data={"image": "not a file"})
    assert r.status_code == 422 and "as a file" in r.json()["error"], r.text
    r = post(server, "/v1/image/embed", data=b"\x89PNG raw", headers={"Content-Type": "image/png"})
    assert r.status_code == 415 and r.json()["field"] == "content-type", r.text
    r = post(server, "/v1/image/embed", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"], r.text
    r = post(server, "/v1/image/embed", data=b"x" * 2_000_000, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body", r.text
    chunked = (b"x" * 65536 for _ in range(32))  # no Content-Length: the same bound while reading
    r = post(server, "/v1/image/embed", data=chunked, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "more than" in r.json()["error"], r.text
    r = post(server, "/v1/text/embed", json={"text": "   "})
    assert r.status_code == 422 and r.json()["field"] == "text"
    # after all that, the replica answers
    r = post(server, "/v1/image/classify", json={"image": b64(png)})
    assert r.status_code == 200 and len(r.json()["results"][0]["scores"]) == 10


def test_web_page_classifies_an_uploaded_digit_scan_and_renders_chinese(server, direct, images, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    scan = tmp_path / "seven.png"
    scan.write_bytes(images["digit7"])
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 900, "height": 900})
        page.goto(server["url"] + "/")
        # this server serves images only: the page offers (and selects) image classification
        page.wait_for_function("document.getElementById('mode').value === 'image/classify'")
        offered = page.eval_on_selector_all("#mode option:not([disabled])", "os => os.map(o => o.value)")
        labels = page.input_value("#image-labels")
        page.set_input_files("#image", str(scan))
        page.click("#go")
        page.wait_for_function("document.getElementById('result').dataset.model === 'taiyi-digits'", timeout=30_000)
        shown = page.inner_text("#result")
        preview = page.eval_on_selector("#preview", "img => img.complete && img.naturalWidth")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        # two different characters, drawn large: with a CJK font they differ, without one both
        # are the same missing-glyph box
        page.evaluate("""() => { for (const [id, ch] of [['g1', '零'], ['g2', '九']]) {
            const s = document.createElement('span'); s.id = id; s.textContent = ch;
            s.style.fontSize = '64px'; document.body.appendChild(s); } }""")
        glyphs = [page.locator(f"#{g}").screenshot(path=str(tmp_path / f"{g}.png")) for g in ("g1", "g2")]
        browser.close()
    assert offered == ["image/classify"]
    assert labels == ",".join(DIGITS)  # the export's classes as the default candidates
    assert preview == 8  # the 8x8 scan, shown enlarged
    (label, ranked), = direct.classify([images["digit7"]])
    lines = shown.splitlines()
    assert lines[0] == f"label: {label}"
    assert [line.split()[0] for line in lines[1:]] == [lb for lb, _ in ranked]  # ranked as the model ranks
    a, b = (np.asarray(Image.open(io.BytesIO(g)).convert("L")) for g in glyphs)
    assert a.shape == b.shape and (a < 128).sum() > 50 and (b < 128).sum() > 50
    assert (a != b).mean() > 0.05, "two different Chinese characters rendered alike: no CJK font"
    page_pixels = np.asarray(Image.open(tmp_path / "page.png").convert("L"))
    assert (page_pixels < 128).sum() > 2000, "the page rendered (nearly) nothing"
