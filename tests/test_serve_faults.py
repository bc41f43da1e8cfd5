"""A Serve model replica SIGKILLed under steady load, on a private local Ray cluster: the gateway
sends the requests the dead replica held again (inference has no side effects), Serve replaces
the replica, and no request fails or waits past ``limits.request_timeout_s``. The replica is
found by its process title and killed from outside; nothing in fs_ray knows it is tested."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import psutil
import pytest
import requests

from fs_ray.config import load_config
from fs_ray.run_configs import ServeConfig

from .conftest import free_port
from .faults import serve_replica_pids
from .model_folders import classifier_folder

pytestmark = pytest.mark.slow

TIMEOUT_S = 45.0
# eight long reviews per request: a forward pass takes a while, so the replica is mid-batch when killed
REVIEWS = ["这家酒店的房间很干净，服务也很周到，早餐种类丰富，下次还会再来。" * 6] * 8


class Load(threading.Thread):
    """``concurrency`` clients, each posting one review after another until stopped; every reply
    is recorded with when it was sent and how long it took."""

    def __init__(self, url: str, concurrency: int):
        super().__init__(daemon=True)
        self.url, self.concurrency = url, concurrency
        self.replies: list[tuple[float, float, object]] = []  # (sent at, seconds, status or error)
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def _client(self) -> None:
        session = requests.Session()
        while not self._halt.is_set():
            sent = time.monotonic()
            try:
                r = session.post(self.url, json={"text": REVIEWS}, timeout=TIMEOUT_S + 30)
                outcome: object = r.status_code if r.status_code == 200 else (r.status_code, r.text[:300])
            except requests.RequestException as err:
                outcome = type(err).__name__
            with self._lock:
                self.replies.append((sent, time.monotonic() - sent, outcome))

    def run(self) -> None:
        clients = [threading.Thread(target=self._client, daemon=True) for _ in range(self.concurrency)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=TIMEOUT_S + 60)


def _deploy(ray_local, tmp_path, replicas: int):
    from ray import serve

    from fs_ray.serving.app import build_app, start_serve

    classifier_folder(tmp_path / "tasks" / "senti", ["负面", "正面"], task="chnsenticorp", preset="small", max_len=128)
    port = free_port()
    cfg = load_config(ServeConfig, None, [
        f"http_port={port}", "grpc_port=0", f"models.tasks={tmp_path / 'tasks'}", "name=faults",
        "route_prefix=/faults", "replicas.num_cpus=0", "replicas.gateway_cpus=0", "replicas.torch_threads=1",
        f"replicas.min_replicas={replicas}", f"replicas.max_replicas={replicas}",
        "batching.max_batch_size=8", f"limits.request_timeout_s={TIMEOUT_S}",
    ])  # fmt: skip
    start_serve(cfg)
    serve.run(build_app(cfg), name=cfg.name, route_prefix=cfg.route_prefix)
    return serve, f"http://127.0.0.1:{port}/faults"


def _busiest(pids: list[int], over_s: float = 1.0) -> int:
    """The replica doing the work (Serve sends a multiplexed model's requests to the replica that
    has it loaded): the one whose CPU time grows most over ``over_s``."""
    procs = [psutil.Process(p) for p in pids]
    start = [sum(p.cpu_times()[:2]) for p in procs]
    time.sleep(over_s)
    grown = [sum(p.cpu_times()[:2]) - s for p, s in zip(procs, start, strict=True)]
    return pids[grown.index(max(grown))]


def _kill_when_busy(pid: int, timeout_s: float = 30) -> None:
    """SIGKILL ``pid`` the moment it is computing (its CPU time grew over the last 20 ms): a
    replica in the middle of a batch, with requests in flight on it."""
    proc = psutil.Process(pid)
    deadline = time.monotonic() + timeout_s
    last = sum(proc.cpu_times()[:2])
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = sum(proc.cpu_times()[:2])
        if now - last >= 0.015:
            break
        last = now
    os.kill(pid, signal.SIGKILL)


def _running(serve, killed: int) -> bool:
    """Every TaskModels replica RUNNING again, and the killed one among none of them."""
    want = serve.status().applications["faults"].deployments["TaskModels"]
    pids = serve_replica_pids("faults", "TaskModels")
    return want.status == "HEALTHY" and len(pids) == want.replica_states.get("RUNNING", 0) and killed not in pids


@pytest.mark.parametrize("replicas", [2, 1], ids=["a-survivor-takes-over", "the-replacement-takes-over"])
def test_a_model_replica_killed_under_load_loses_no_request(ray_local, tmp_path, replicas):
    serve, base = _deploy(ray_local, tmp_path, replicas)
    url = f"{base}/v1/classify"
    try:
        assert requests.post(url, json={"text": REVIEWS}, timeout=60).status_code == 200
        before = serve_replica_pids("faults", "TaskModels")
        assert len(before) == replicas
        load = Load(url, concurrency=16)
        load.start()
        time.sleep(4)  # steady load first
        victim = _busiest(before)
        _kill_when_busy(victim)
        killed_at = time.monotonic()
        deadline = killed_at + 120
        while not _running(serve, victim) and time.monotonic() < deadline:
            time.sleep(0.2)
        healthy_s = time.monotonic() - killed_at
        time.sleep(8)  # and steady load on the replaced set (the gateway learns of it within seconds)
        load.stop()
        lost = requests.get(f"{base}/readyz", timeout=30).json()["replica_loss"]
    finally:
        serve.shutdown()

    outcomes = Counter(o for _, _, o in load.replies)
    in_flight = [o for s, d, o in load.replies if s < killed_at < s + d]
    slowest = max(d for _, d, _ in load.replies)
    print(f"\n{replicas} replica(s): {len(load.replies)} requests, {outcomes}; health back in {healthy_s:.1f} s; "
          f"slowest request {slowest:.2f} s; {len(in_flight)} in flight at the kill; gateway {lost}")  # fmt: skip
    assert healthy_s < 120, "Serve did not replace the killed replica within 2 minutes"
    assert victim not in serve_replica_pids("faults", "TaskModels")
    assert outcomes == Counter({200: len(load.replies)}), outcomes  # the dead replica's requests were sent again
    assert lost["retried"] >= 1 and lost["failed"] == 0, f"the kill cut no call short: nothing was tested {lost}"
    assert slowest < TIMEOUT_S, f"a request took {slowest:.1f} s, past limits.request_timeout_s"
    after = [s for s, _, _ in load.replies if s > killed_at + healthy_s]
    assert len(after) >= 10, "the replaced set served too little to tell"
