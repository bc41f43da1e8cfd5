"""Serving soak: one fs_ray Serve app under steady load for a long while; every Serve process's
resident memory sampled throughout, errors counted (by hand, not in CI).

    .venv/bin/python tests/benchmarks/soak_serve.py [--minutes 10] [--concurrency 16] [--preset tiny]

One private local Ray cluster, the app serving a tiny Erlangshen classifier export and the
fill-mask model (``/v1/classify`` and ``/v1/fill-mask`` alternate, real eprstmt reviews), batching
on (32, 5 ms), one replica each. A closed-loop aiohttp client keeps ``--concurrency`` requests in
flight; every 30 s it prints requests/s, p50/p99 and errors of that window, and the RSS of the HTTP
proxy, the gateway and each model replica (by Ray's process titles). At the end: each process's
RSS at the start of the load (after a 30 s warm-up), its peak, and at the end; growth is the end
minus the start. Goal: zero errors, no growth beyond noise.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.benchmarks.bench_serve import free_port, texts  # noqa: E402


def serve_rss() -> dict[str, float]:
    """MiB resident of each Serve process, by a short name."""
    import psutil

    out: dict[str, float] = {}
    for p in psutil.process_iter(["cmdline"]):
        head = (p.info["cmdline"] or [""])[0]
        if head.startswith("ray::ProxyActor"):
            name = "proxy"
        elif head.startswith("ray::ServeController"):
            name = "controller"
        elif head.startswith("ray::ServeReplica:soak:"):
            # Gateway, TaskModels, MaskedLM (the title gains ".<method>" while a request runs)
            name = head[len("ray::ServeReplica:soak:") :].split()[0].split(".")[0]
        else:
            continue
        try:
            out[name] = out.get(name, 0.0) + p.memory_info().rss / 2**20
        except psutil.Error:
            continue
    return out


async def soak(base: str, reviews: list[str], concurrency: int, seconds: float, every: float, report) -> dict:
    import aiohttp

    window: list[float] = []
    errors_window = 0
    totals = {"ok": 0, "errors": 0}
    stop = time.monotonic() + seconds
    counter = 0

    async def worker(session):
        nonlocal counter, errors_window
        while time.monotonic() < stop:
            i = counter
            counter += 1
            text = reviews[i % len(reviews)]
            if i % 2:
                url, body = f"{base}/v1/classify", {"text": text}
            else:
                url, body = f"{base}/v1/fill-mask", {"text": text[:20] + "[MASK]" + text[21:40]}
            t = time.perf_counter()
            try:
                async with session.post(url, json=body) as r:
                    await r.read()
                    ok = r.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            if ok:
                window.append(time.perf_counter() - t)
                totals["ok"] += 1
            else:
                errors_window += 1
                totals["errors"] += 1

    async def reporter():
        nonlocal errors_window
        start = time.monotonic()
        while time.monotonic() < stop:
            await asyncio.sleep(min(every, max(0.0, stop - time.monotonic())))
            lat, errs = sorted(window), errors_window
            window.clear()
            errors_window = 0
            report(time.monotonic() - start, lat, errs)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(reporter(), *(worker(session) for _ in range(concurrency)))
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--every", type=float, default=30.0, help="Seconds between report lines.")
    args = parser.parse_args()

    import ray
    from ray import serve

    from fs_ray.config import load_config
    from fs_ray.run_configs import ServeConfig
    from fs_ray.serving.app import build_app, start_serve
    from tests.model_folders import classifier_folder, mlm_folder

    tmp = Path(tempfile.mkdtemp(prefix="fs_ray_soak_"))
    classifier_folder(tmp / "tasks" / "eprstmt", ["Negative", "Positive"], task="eprstmt", preset=args.preset,
                      max_len=128)  # fmt: skip
    mlm = mlm_folder(tmp / "erlangshen", preset=args.preset)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    cfg = load_config(ServeConfig, None, [
        f"models.tasks={tmp / 'tasks'}", f"models.fill_mask={mlm}", f"http_port={port}", "grpc_port=0",
        "name=soak", "route_prefix=/soak", "replicas.min_replicas=1", "replicas.max_replicas=1",
        "replicas.num_cpus=0", "replicas.gateway_cpus=0", "replicas.torch_threads=1",
        "batching.max_batch_size=32", "batching.batch_wait_timeout_s=0.005", "limits.max_input_chars=512",
    ])  # fmt: skip
    start_serve(cfg)
    serve.run(build_app(cfg), name="soak", route_prefix="/soak")
    base = f"http://127.0.0.1:{port}/soak"
    reviews = texts()
    samples: list[dict[str, float]] = []

    def report(at: float, lat: list[float], errs: int) -> None:
        rss = serve_rss()
        samples.append(rss)
        n = len(lat)
        p50 = 1000 * statistics.median(lat) if n else float("nan")
        p99 = 1000 * lat[min(n - 1, int(0.99 * n))] if n else float("nan")
        mem = "  ".join(f"{k} {v:.0f}" for k, v in sorted(rss.items()))
        print(f"  {at / 60:5.1f} min  {n / args.every:6.1f} req/s  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  "
              f"errors {errs}  RSS MiB: {mem}", flush=True)  # fmt: skip

    print(f"soak: c={args.concurrency}, {args.minutes:g} min, Erlangshen {args.preset} classifier + fill-mask, "
          "one replica each, 2 cores shared by client and server", flush=True)  # fmt: skip
    try:
        asyncio.run(soak(base, reviews, args.concurrency, 30.0, 30.0, lambda *a: None))  # warm-up
        start = serve_rss()
        totals = asyncio.run(soak(base, reviews, args.concurrency, 60 * args.minutes, args.every, report))
        end = serve_rss()
    finally:
        serve.shutdown()
        ray.shutdown()
    print()
    print(f"{totals['ok']} requests, {totals['errors']} errors, {totals['ok'] / (60 * args.minutes):.1f} req/s")
    print("| process | RSS at start (MiB) | peak | at end | growth |")
    print("|---|---:|---:|---:|---:|")
    for name in sorted(start):
        peak = max(s.get(name, 0.0) for s in [start, *samples, end])
        print(f"| {name} | {start[name]:.0f} | {peak:.0f} | {end.get(name, 0.0):.0f} | {end.get(name, 0.0) - start[name]:+.0f} |")
    return 0 if totals["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
