"""Faults injected from outside, as an operator's bad day would: a Ray Train worker process is
found by its process title (Ray names it ``ray::RayTrainWorker...``) and SIGKILLed once a
condition about the run's files holds. Nothing in fs_ray knows it is being tested."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import psutil


def train_worker_pids() -> list[int]:
    """PIDs of the Ray Train worker processes on this machine, oldest first."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].startswith("ray::RayTrainWorker"):
            found.append((p.info["create_time"], p.info["pid"]))
    return [pid for _, pid in sorted(found)]


def checkpoint_registered(train_dir) -> Callable[[], bool]:
    """True once Ray Train's controller has registered a checkpoint of a run under ``train_dir``
    (it writes this snapshot when it has)."""

    def registered() -> bool:
        return any(
            "checkpoint_step" in p.read_text(errors="replace")
            for p in train_dir.glob("*/checkpoint_manager_snapshot.json")
        )

    return registered


class WorkerKiller(threading.Thread):
    """Once ``when()`` is true, SIGKILL one Ray Train worker (the ``index``-th oldest); ``killed``
    holds its pid. Gives up after ``timeout_s`` (the test then fails on ``killed`` being empty)."""

    def __init__(self, when: Callable[[], bool], index: int = -1, timeout_s: float = 600, poll_s: float = 0.05):
        super().__init__(daemon=True)
        self.when, self.index, self.timeout_s, self.poll_s = when, index, timeout_s, poll_s
        self.killed: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self._halt.is_set() and time.monotonic() < deadline:
            if self.when():
                pids = train_worker_pids()
                if pids:
                    pid = pids[self.index]
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
                    return
            time.sleep(self.poll_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def serve_replica_pids(app: str, deployment: str) -> list[int]:
    """PIDs of the Serve replicas of ``deployment`` in application ``app`` (Ray titles them
    ``ray::ServeReplica:<app>:<deployment>``), oldest first."""
    title = f"ray::ServeReplica:{app}:{deployment}"
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].startswith(title):
            found.append((p.info["create_time"], p.info["pid"]))
    return [pid for _, pid in sorted(found)]
