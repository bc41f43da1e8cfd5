"""Serving throughput: dynamic batching vs. one request per forward pass, side by side.

    .venv/bin/python tests/benchmarks/bench_serve.py [--preset tiny] [--duration 15] [--concurrency 1 8 32]

One private local Ray cluster runs two copies of the fs_ray Serve application on the same
classifier folder (a tiny Erlangshen sequence classifier in the fine-tuning export layout):
``/batched`` with ``batching.max_batch_size=32`` and ``/unbatched`` with ``max_batch_size=1``;
everything else equal (one model replica each, 1 torch thread, same gateway). A closed-loop load
generator (aiohttp, on loopback) keeps ``concurrency`` requests in flight for ``--duration``
seconds against ``POST /v1/classify`` with one real FewCLUE eprstmt review per request, after a
warm-up; the two applications alternate at each concurrency so drift on a shared machine hits
both. Printed: requests/s, p50/p99 latency, errors, and batched/unbatched throughput.
Target: >= 3x throughput at concurrency 32 with zero errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def texts() -> list[str]:
    path = REPO / "fs_ray/assets/fewclue/eprstmt/train_few_all.json"
    return [json.loads(line)["sentence"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


async def load(url: str, reviews: list[str], concurrency: int, duration: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + duration
    counter = 0

    async def worker(session):
        nonlocal errors, counter
        while time.monotonic() < stop:
            text = reviews[counter % len(reviews)]
            counter += 1
            t = time.perf_counter()
            try:
                async with session.post(url, json={"text": text}) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                        continue
            except aiohttp.ClientError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        t0 = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.monotonic() - t0
    latencies.sort()
    n = len(latencies)
    return {
        "ok": n,
        "errors": errors,
        "rps": n / elapsed,
        "p50_ms": 1000 * statistics.median(latencies) if n else float("nan"),
        "p99_ms": 1000 * latencies[min(n - 1, int(0.99 * n))] if n else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="Erlangshen preset of the classifier (tiny, small, ...).")
    parser.add_argument("--duration", type=float, default=15.0, help="Seconds of load per measurement.")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-s", type=float, default=0.005)
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs per model replica (e.g. 0.5 on a 1-GPU box).")
    args = parser.parse_args()

    import ray
    from ray import serve

    from fs_ray.config import load_config
    from fs_ray.run_configs import ServeConfig
    from fs_ray.serving.app import build_app, start_serve
    from tests.model_folders import classifier_folder

    tmp = Path(tempfile.mkdtemp(prefix="fs_ray_bench_serve_"))
    folder = classifier_folder(tmp / "eprstmt", ["Negative", "Positive"], task="eprstmt", preset=args.preset,
                               max_len=128)
    ray.init(address="local", num_cpus=2, num_gpus=2 if args.gpus else 0, include_dashboard=False,
             log_to_driver=False)
    port = free_port()
    common = [
        f"models.tasks={folder}", f"http_port={port}", "grpc_port=0",
        "replicas.min_replicas=1", "replicas.max_replicas=1", "replicas.num_cpus=0", "replicas.gateway_cpus=0",
        "replicas.torch_threads=1", f"replicas.num_gpus={args.gpus}", f"batching.max_ongoing_requests={max(64, 2 * max(args.concurrency))}",
        "limits.max_items=64",
    ]
    apps = {
        "batched": [f"batching.max_batch_size={args.max_batch_size}", f"batching.batch_wait_timeout_s={args.batch_wait_s}"],
        "unbatched": ["batching.max_batch_size=1", "batching.batch_wait_timeout_s=0"],
    }
    for name, extra in apps.items():
        cfg = load_config(ServeConfig, None, [*common, *extra, f"name={name}", f"route_prefix=/{name}"])
        if name == "batched":
            start_serve(cfg)
        serve.run(build_app(cfg), name=name, route_prefix=f"/{name}")
    reviews = texts()
    print(f"classifier: Erlangshen {args.preset} (max_len 128), {len(reviews)} eprstmt reviews, "
          f"{args.duration:.0f} s per point, 2 CPU cores shared by client, proxy, gateway and replica")
    rows = []
    try:
        for c in args.concurrency:
            for name in ("unbatched", "batched"):
                url = f"http://127.0.0.1:{port}/{name}/v1/classify"
                asyncio.run(load(url, reviews, c, args.warmup))
                result = asyncio.run(load(url, reviews, c, args.duration))
                rows.append((name, c, result))
                print(f"  {name:9s} c={c:<3d} {result['rps']:8.1f} req/s  p50 {result['p50_ms']:7.1f} ms  "
                      f"p99 {result['p99_ms']:7.1f} ms  errors {result['errors']}", flush=True)
        handle = serve.get_deployment_handle("TaskModels", app_name="batched")
        sizes = handle.info.remote().result()["batch_sizes"]
    finally:
        serve.shutdown()
        ray.shutdown()
    print()
    print("| concurrency | unbatched req/s | batched req/s | ratio | unbatched p50 / p99 ms | batched p50 / p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    by = {(n, c): r for n, c, r in rows}
    for c in args.concurrency:
        u, b = by[("unbatched", c)], by[("batched", c)]
        print(f"| {c} | {u['rps']:.1f} | {b['rps']:.1f} | {b['rps'] / u['rps']:.2f}x | "
              f"{u['p50_ms']:.1f} / {u['p99_ms']:.1f} | {b['p50_ms']:.1f} / {b['p99_ms']:.1f} | "
              f"{u['errors'] + b['errors']} |")
    busiest = sorted(((int(k), v) for k, v in sizes.items()), key=lambda kv: -kv[1])[:5]
    print(f"batched forward passes by batch size (most frequent): {busiest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
