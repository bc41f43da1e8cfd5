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
FAST_TIER = os.environ.get("FS_RAY_FAST_TIER") == "1"  # tests/run.sh --fast


def pytest_collection_modifyitems(config, items):
    """Every test that starts Ray (the in-process ``ray_local`` instance or a ``cluster``) is ``slow``:
    the fast tier (``tests/run.sh --fast``) is everything else."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()) or item.get_closest_marker("cluster"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_ray(monkeypatch):
    """In the fast tier a test that starts Ray fails, naming the marker it lacks."""
    if FAST_TIER:
        import ray

        def refuse(*_args, **_kwargs):
            raise RuntimeError("the fast tier starts no Ray: mark this test @pytest.mark.slow")

        monkeypatch.setattr(ray, "init", refuse)
    yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_local():
    """One private local Ray instance for every test that needs Ray but not the job server; started
    on first use and kept for the session (a test that needs the machine to itself may stop it).
    Module-scoped so module fixtures can use it, and so a module after such a test gets it back."""
    import ray

    from fs_ray.local_cluster import ensure_token

    if not ray.is_initialized():
        ensure_token()  # a fresh machine has none, and a token-authenticated Ray needs one
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
