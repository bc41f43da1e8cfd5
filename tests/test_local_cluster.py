"""The embedded local cluster: comes up with a token-protected job server, runs a submitted fs_ray
job, and goes down without touching any other Ray on the machine."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fs_ray.assets import DEMO_CORPUS
from fs_ray.local_cluster import (
    LocalCluster,
    client_env,
    cluster_processes,
    down,
    job_server_ready,
    reserve_ports,
    up,
)

from .conftest import REPO, free_port

pytestmark = pytest.mark.cluster


@pytest.fixture
def short_root():
    """Ray's unix socket paths must stay under 107 bytes, so not pytest's long tmp_path."""
    root = Path(tempfile.mkdtemp(prefix="fsr", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def status_code(cluster: LocalCluster) -> int:
    cmd = [
        sys.executable, "-m", "fs_ray.local_cluster", "status", f"--name={cluster.name}",
        f"--gcs-port={cluster.gcs_port}", f"--dashboard-port={cluster.dashboard_port}",
    ]  # fmt: skip
    env = client_env()
    env["FS_RAY_CLUSTER_ROOT"] = str(cluster.root)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120).returncode


def test_up_submit_down_touches_only_its_own_cluster(tmp_path, short_root):
    from ray.job_submission import JobStatus, JobSubmissionClient

    a, b = reserve_ports(nodes=1).heads("a", "b", root=short_root, num_cpus=2)
    up(b, quiet=True)
    try:
        state = up(a, quiet=True)
        assert job_server_ready(a) and state["dashboard_url"] == a.dashboard_url
        assert (a.temp_dir).is_dir() and a.state_path.exists()
        assert status_code(a) == 0

        # token auth is on: an anonymous request is refused
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{a.dashboard_url}/api/jobs/", timeout=10)
        assert err.value.code in (401, 403)

        # a real fs_ray job through the job server, shipped as a working dir
        src = tmp_path / "docs.txt"
        src.write_text("\n".join(DEMO_CORPUS.read_text(encoding="utf-8").split("\n")[:60]), encoding="utf-8")
        out = tmp_path / "prepared"
        client = JobSubmissionClient(a.dashboard_url)
        job_id = client.submit_job(
            entrypoint=(
                "python jobs/prepare.py --config jobs/configs/prepare_demo.yaml "
                f"--set input.paths=[{src}] --set output.dir={out} --set progress_every_s=1"
            ),
            runtime_env={"working_dir": str(REPO)},
        )
        deadline = time.monotonic() + 240
        while client.get_job_status(job_id) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            assert time.monotonic() < deadline, "job did not finish in time"
            time.sleep(1)
        logs = client.get_job_logs(job_id)
        assert client.get_job_status(job_id) == JobStatus.SUCCEEDED, logs[-3000:]
        assert "[prepare]" in logs and "prepared " in logs
        assert json.loads((out / "manifest.json").read_text())["totals"]["documents"] > 0
        assert job_id in [j.submission_id for j in client.list_jobs()]

        # down stops cluster a, all of it, and nothing of cluster b
        assert down(a, quiet=True) > 0
        assert cluster_processes(a) == [] and not job_server_ready(a)
        assert not a.state_path.exists()
        assert status_code(a) == 3
        assert job_server_ready(b) and cluster_processes(b)
    finally:
        down(a, quiet=True)
        down(b, quiet=True)
    assert cluster_processes(b) == []


def test_too_long_cluster_folder_fails_before_starting_ray(tmp_path):
    cluster = LocalCluster(name="x" * 60, root=tmp_path, gcs_port=free_port(), dashboard_port=free_port())
    with pytest.raises(RuntimeError, match=r"too long for Ray's unix sockets"):
        up(cluster, quiet=True)
    assert not cluster.dir.exists()


def test_busy_port_fails_with_a_clear_message(short_root):
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        cluster = LocalCluster(
            name="busy", root=short_root, gcs_port=taken.getsockname()[1], dashboard_port=free_port()
        )
        with pytest.raises(RuntimeError, match=rf"port\(s\) {cluster.gcs_port} already in use"):
            up(cluster, quiet=True)
    assert cluster_processes(cluster) == []
