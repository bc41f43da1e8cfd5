"""Serving throughput: fs_ray's Serve app batched and unbatched, and what a user would run instead,
side by side in one run.

    .venv/bin/python tests/benchmarks/bench_serve.py [--preset tiny] [--duration 15] [--concurrency 1 8 32 128]
    .venv/bin/python tests/benchmarks/bench_serve.py --peers none      # fs_ray only

One private local Ray cluster runs two copies of the fs_ray Serve application on the same
classifier folder (a tiny Erlangshen sequence classifier in the fine-tuning export layout):
``/batched`` with ``batching.max_batch_size=32`` and ``/unbatched`` with ``max_batch_size=1``;
everything else equal (one model replica each, 1 torch thread, same gateway). A closed-loop load
generator (aiohttp, on loopback) keeps ``concurrency`` requests in flight for ``--duration``
seconds against ``POST /v1/classify`` with one real FewCLUE eprstmt review per request, after a
warm-up; the two applications alternate at each concurrency so drift on a shared machine hits
both. Printed: requests/s, p50/p99 latency, errors, and batched/unbatched throughput.

Peers (``--peers fastapi litserve``, tests/benchmarks/serve_peers.py), each its own process on the
same folder through the same ``TaskModel`` class, 1 torch thread, measured in turn with the fs_ray
apps at every concurrency by the same client: a plain FastAPI + uvicorn server calling the model
inline one request at a time, and LitServe with its own dynamic batching (same batch size and
wait). LitServe is not an fs_ray dependency: ``.venv/bin/pip install -e '.[bench]'``.
The CPU each server's processes spent per request is printed too (fs_ray: HTTP proxy, gateway and
model replica apart), sampled from /proc around each measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
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


def process_cpu(match) -> dict[str, float]:
    """CPU seconds (user + system) so far of every process whose command line ``match`` names,
    grouped by the name it returns (children included)."""
    import psutil

    out: dict[str, float] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            name = match(p.info["cmdline"] or [])
            if name is None:
                continue
            t = p.cpu_times()
            out[name] = out.get(name, 0.0) + t.user + t.system
            for c in p.children(recursive=True):
                ct = c.cpu_times()
                out[name] += ct.user + ct.system
        except psutil.Error:
            continue
    return out


def serve_part(app: str):
    def match(cmd: list[str]) -> str | None:
        head = cmd[0] if cmd else ""
        if head.startswith("ray::ProxyActor"):
            return "proxy"
        if head.startswith(f"ray::ServeReplica:{app}:Gateway"):
            return "gateway"
        if head.startswith(f"ray::ServeReplica:{app}:TaskModels"):
            return "replica"
        return None

    return match


def peer_part(pid: int):
    """CPU seconds so far of a peer server's process and its children (LitServe's workers)."""
    import psutil

    def by_pid() -> dict[str, float]:
        try:
            p = psutil.Process(pid)
            procs = [p, *p.children(recursive=True)]
            return {"server": sum(x.cpu_times().user + x.cpu_times().system for x in procs)}
        except psutil.Error:
            return {}

    return by_pid


def start_peer(kind: str, folder: Path, port: int, args) -> subprocess.Popen:
    import requests

    cmd = [sys.executable, str(REPO / "tests/benchmarks/serve_peers.py"), kind, "--folder", str(folder),
           "--port", str(port), "--max-batch-size", str(args.max_batch_size), "--batch-wait-s", str(args.batch_wait_s)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: the {kind} peer exited: {proc.stderr.read()[-2000:]}")
        try:
            r = requests.post(f"http://127.0.0.1:{port}/v1/classify", json={"text": "好"}, timeout=5)
            if r.status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop_peer(proc)
    raise SystemExit(f"error: the {kind} peer did not answer within 120 s")


def stop_peer(proc: subprocess.Popen) -> None:
    """The peer and every process it started (LitServe's workers poll even when idle)."""
    import os
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


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
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--peers", nargs="+", default=["fastapi", "litserve"], choices=["fastapi", "litserve", "none"],
                        help="Servers a user would run instead, measured in the same run (none: fs_ray only).")
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
    peers = [p for p in args.peers if p != "none"]
    reviews = texts()
    print(f"classifier: Erlangshen {args.preset} (max_len 128), {len(reviews)} eprstmt reviews, "
          f"{args.duration:.0f} s per point, 2 CPU cores shared by client, proxy, gateway and replica")
    rows = []
    servers = {
        "unbatched": (f"http://127.0.0.1:{port}/unbatched/v1/classify", lambda: process_cpu(serve_part("unbatched"))),
        "batched": (f"http://127.0.0.1:{port}/batched/v1/classify", lambda: process_cpu(serve_part("batched"))),
        **{kind: None for kind in peers},  # started for their turn only: nothing of theirs runs meanwhile
    }
    proc = None
    try:
        for c in args.concurrency:
            for name, server in servers.items():
                if server is None:
                    peer_port = free_port()
                    proc = start_peer(name, folder, peer_port, args)
                    url, cpu = f"http://127.0.0.1:{peer_port}/v1/classify", peer_part(proc.pid)
                else:
                    url, cpu = server
                asyncio.run(load(url, reviews, c, args.warmup))
                before = cpu()
                result = asyncio.run(load(url, reviews, c, args.duration))
                after = cpu()
                if proc is not None:
                    stop_peer(proc)
                    proc = None
                result["cpu_ms"] = {k: 1000 * (after.get(k, 0) - before.get(k, 0)) / max(1, result["ok"]) for k in after}
                rows.append((name, c, result))
                split = "  ".join(f"{k} {v:.2f}" for k, v in result["cpu_ms"].items())
                print(f"  {name:9s} c={c:<3d} {result['rps']:8.1f} req/s  p50 {result['p50_ms']:7.1f} ms  "
                      f"p99 {result['p99_ms']:7.1f} ms  errors {result['errors']}  CPU ms/request: {split}", flush=True)
        handle = serve.get_deployment_handle("TaskModels", app_name="batched")
        sizes = handle.info.remote().result()["batch_sizes"]
    finally:
        if proc is not None:
            stop_peer(proc)
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
    if peers:
        names = ["batched", "unbatched", *peers]
        print()
        print("| concurrency | " + " | ".join(f"{n} req/s (p50 / p99 ms)" for n in names) + " | fs_ray batched / best peer |")
        print("|---|" + "---|" * (len(names) + 1))
        for c in args.concurrency:
            cells = [f"{by[(n, c)]['rps']:.1f} ({by[(n, c)]['p50_ms']:.0f} / {by[(n, c)]['p99_ms']:.0f})" for n in names]
            best = max(by[(n, c)]["rps"] for n in peers)
            print(f"| {c} | " + " | ".join(cells) + f" | {by[('batched', c)]['rps'] / best:.2f}x |")
        print()
        print("CPU ms per request:")
        for c in args.concurrency:
            print(f"  c={c}: " + "; ".join(
                f"{n} " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(by[(n, c)]["cpu_ms"].items())) for n in names
            ))
    busiest = sorted(((int(k), v) for k, v in sizes.items()), key=lambda kv: -kv[1])[:5]
    print(f"batched forward passes by batch size (most frequent): {busiest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
