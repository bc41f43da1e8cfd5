"""Shared fixtures: a private in-process Ray cluster, and free ports for `ray start` clusters.

Nothing here touches a Ray cluster that the tests did not start.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests are clients of token-authenticated clusters that they start themselves.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_block(size: int = 1000, start: int = 30000) -> int:
    """A base port at or above ``start`` whose Ray node ports look free (see LocalCluster.port_base)."""
    for base in range(start, 60000 - size, size):
        ok = True
        for port in (base + 1, base + 10, base + 11, base + 12, base + 13, base + 14, base + 15, base + 100):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


@pytest.fixture(scope="module")
def ray_local():
    """One private local Ray instance for every test that needs Ray but not the job server; started
    on first use and kept for the session (a test that needs the machine to itself may stop it).
    Module-scoped so module fixtures can use it, and so a module after such a test gets it back."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local", num_cpus=2, include_dashboard=False, log_to_driver=True, configure_logging=False
        )
    yield ray


@pytest.fixture(scope="session", autouse=True)
def _stop_ray_local():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()
