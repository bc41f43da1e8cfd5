"""What a user would run instead of fs_ray's Serve app, serving the same classifier folder with the
same request and reply shape (``POST /v1/classify`` ``{"text": ...}``), for ``bench_serve.py``.

    python tests/benchmarks/serve_peers.py fastapi  --folder DIR --port N [--threads 1]
    python tests/benchmarks/serve_peers.py litserve --folder DIR --port N [--max-batch-size 32] [--batch-wait-s 0.01]

``fastapi``: one uvicorn process, an ``async def`` route calling the model inline, one request per
forward pass: what a user writes in an afternoon. ``litserve``: LitServe (``pip install
litserve``) with its own dynamic batching, one inference worker, one API server process. Both call
``fs_ray.serving.inference.TaskModel`` (what fs_ray's model replica calls), so the model work is
identical and only the serving differs. Each prints ``ready`` once it answers.
"""

import argparse
import sys
from pathlib import Path

from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

try:
    import litserve as ls

    LitAPI = ls.LitAPI
except ImportError:  # only the litserve peer needs it; bench_serve.py says how to install it
    ls, LitAPI = None, object


def _reply(model, result) -> dict:
    label, scores = result
    return {"model": model.name, "results": [{"label": label, "scores": [{"label": k, "score": v} for k, v in scores]}]}


class Body(BaseModel):
    text: str


def run_fastapi(folder: str, port: int, threads: int) -> None:
    import torch
    import uvicorn
    from fastapi import FastAPI

    from fs_ray.serving.inference import TaskModel

    torch.set_num_threads(threads)
    model = TaskModel(folder)
    app = FastAPI()

    @app.post("/v1/classify")
    async def classify(body: Body) -> dict:
        return _reply(model, model.classify([body.text])[0])

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    print("ready", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class Classifier(LitAPI):
    """The classifier as a LitServe API: LitServe batches the decoded texts, ``predict`` runs one
    forward pass over them."""

    def __init__(self, folder: str, threads: int, **kwargs):
        super().__init__(**kwargs)
        self.folder, self.threads = folder, threads

    def setup(self, device):
        import torch

        from fs_ray.serving.inference import TaskModel

        torch.set_num_threads(self.threads)
        self.model = TaskModel(self.folder)

    def decode_request(self, request):
        return request["text"]

    def batch(self, inputs):
        return list(inputs)

    def predict(self, texts):
        return self.model.classify(texts if isinstance(texts, list) else [texts])

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        if isinstance(output, list):  # an unbatched call's list of one
            output = output[0]
        return _reply(self.model, output)


def run_litserve(folder: str, port: int, threads: int, max_batch_size: int, batch_wait_s: float) -> None:
    if ls is None:
        raise SystemExit("error: the litserve peer needs LitServe: .venv/bin/pip install 'litserve>=0.2.19,<0.3'")
    api = Classifier(folder, threads, max_batch_size=max_batch_size, batch_timeout=batch_wait_s, api_path="/v1/classify")
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=60)
    print("ready", flush=True)
    server.run(host="127.0.0.1", port=port, num_api_servers=1, log_level="warning", generate_client_file=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("server", choices=["fastapi", "litserve"])
    parser.add_argument("--folder", required=True, help="A fine-tuned classifier export.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch threads.")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-s", type=float, default=0.01)
    args = parser.parse_args()
    if args.server == "fastapi":
        run_fastapi(args.folder, args.port, args.threads)
    else:
        run_litserve(args.folder, args.port, args.threads, args.max_batch_size, args.batch_wait_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
