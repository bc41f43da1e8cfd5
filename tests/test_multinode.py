"""A real two-node Ray cluster on one machine: a head and a second node (its own `ray start
--address`, temp dir, ports and resources). A 2-worker pretraining job submitted with the job
API puts one worker on each node and checkpoints to a shared folder; the second node is killed
mid-run and started again, and the job recovers through FailureConfig and finishes at its
planned step count."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from fs_ray.assets import DEMO_CORPUS
from fs_ray.local_cluster import WorkerNode, down, reserve_ports, up

from .conftest import REPO

pytestmark = pytest.mark.cluster

STEPS = 120
DONE = {"SUCCEEDED", "FAILED", "STOPPED"}


def _wait_job(client, job_id, deadline_s, until=None):
    start = time.monotonic()
    last = ""
    while True:
        status = str(client.get_job_status(job_id)).split(".")[-1]
        if status in DONE or (until is not None and until()):
            return status
        lines = [x for x in client.get_job_logs(job_id).splitlines() if "[pretrain]" in x or "[prepare]" in x]
        if lines and lines[-1] != last:
            last = lines[-1]
            print(f"[test] {time.monotonic() - start:5.0f}s {status}: {last[-200:]}", flush=True)
        assert time.monotonic() - start < deadline_s, f"job {job_id} still {status}: {client.get_job_logs(job_id)[-3000:]}"
        time.sleep(2)


@pytest.mark.timeout(1800)
def test_two_node_pretraining_job_survives_losing_a_node(tmp_path):
    from ray.job_submission import JobSubmissionClient

    root = Path(tempfile.mkdtemp(prefix="fsr", dir="/tmp"))  # short: Ray's unix sockets
    ports = reserve_ports(nodes=2)  # head, node b and its replacement: one block each, none overlapping
    head = ports.cluster(name="mn", root=root, num_cpus=2)
    node = WorkerNode(head, "b", port_base=ports.node_bases[0], num_cpus=1, resources={"fs_ray_node_b": 1})
    lost = None
    shared = tmp_path / "shared"  # both nodes see this folder, as they would an NFS/EFS mount
    shared.mkdir()
    try:
        up(head, quiet=True)
        node.start()
        client = JobSubmissionClient(head.dashboard_url)
        src = shared / "docs.txt"
        src.write_text("\n".join(DEMO_CORPUS.read_text(encoding="utf-8").split("\n")[:400]), encoding="utf-8")
        prep = client.submit_job(
            entrypoint=(
                "python jobs/prepare.py --config jobs/configs/prepare_demo.yaml "
                f"--set input.paths=[{src}] --set output.dir={shared / 'prepared'} --set pack.seq_len=64"
            ),
            runtime_env={"working_dir": str(REPO)},
        )
        assert _wait_job(client, prep, 300) == "SUCCEEDED", client.get_job_logs(prep)[-3000:]

        run_dir = shared / "runs" / "two-nodes"
        job = client.submit_job(
            entrypoint=(
                "python jobs/pretrain.py --config jobs/configs/pretrain_erlangshen_tiny.yaml "
                f"--set data.prepared_dir={shared / 'prepared'} --set run.storage_path={shared / 'runs'} "
                "--set run.name=two-nodes --set scaling.num_workers=2 --set scaling.cpus_per_worker=1 "
                "--set scaling.placement_strategy=STRICT_SPREAD "
                f"--set optim.max_steps={STEPS} --set optim.micro_batch_size=8 --set optim.warmup_steps=2 "
                "--set checkpoint.every_n_steps=10 --set checkpoint.max_failures=5"
            ),
            runtime_env={"working_dir": str(REPO)},
        )
        # lose the second node once the run has a checkpoint and is still training
        # (registered: Ray Train has taken the report, so a restart finds it)
        status = _wait_job(client, job, 600, until=lambda: "registered at step" in client.get_job_logs(job))
        assert status not in DONE, f"the run ended before the node could be lost: {client.get_job_logs(job)[-3000:]}"
        print(f"[test] killing node b: {sorted(p.name for p in run_dir.glob('checkpoint_step*'))}", flush=True)
        assert node.kill() > 0
        time.sleep(5)
        # the machine comes back as a new Ray node (new node id; new ports, as a replacement VM
        # would have a new address: a raylet on the dead node's exact address is not rescheduled)
        lost, node = node, WorkerNode(head, "b2", port_base=ports.node_bases[1], num_cpus=1,
                                      resources={"fs_ray_node_b": 1})
        node.start()
        print("[test] node b started again", flush=True)
        assert _wait_job(client, job, 900) == "SUCCEEDED", client.get_job_logs(job)[-5000:]
        logs = client.get_job_logs(job)
    finally:
        for n in (node, lost):
            if n is not None:
                n.kill()
        down(head, quiet=True)
        shutil.rmtree(root, ignore_errors=True)

    # one worker per node (both nodes share this machine's IP, so Ray node ids tell them apart)
    placed = re.findall(r"\[pretrain\] rank (\d+)/2 on node (\w+)", logs)
    rank0 = [n for r, n in placed if r == "0"]
    rank1 = [n for r, n in placed if r == "1"]
    assert rank0 and rank1, logs[-3000:]
    assert rank0[0] != rank1[0] and rank0[-1] != rank1[-1], placed  # first and last group: one per node
    assert len(set(rank0) | set(rank1)) == 3, f"head, lost node and the one that came back: {placed}"
    # the run failed over and resumed from a checkpoint in the shared folder ...
    resumed = [int(m) for m in re.findall(r"\[pretrain\] resumed from step (\d+)", logs)]
    assert resumed and all(0 < s < STEPS for s in resumed), logs[-3000:]
    # ... and finished at the planned step, with every planned batch trained once in the end
    assert json.loads((run_dir / "data_position.json").read_text()) == {
        "step": STEPS,
        "batches": STEPS,
        "checkpoint": f"checkpoint_step{STEPS:08d}",
    }
    assert (run_dir / f"checkpoint_step{STEPS:08d}").is_dir()
    assert (run_dir / "export" / "model.safetensors").is_file()


def test_a_folder_one_node_cannot_see_is_refused_before_training(tmp_path):
    """The second node runs in its own mount namespace with an empty tmpfs over the run folder,
    as a machine with its own disk would: the storage check names that node."""
    import shlex
    import subprocess
    import sys

    from fs_ray.local_cluster import client_env

    root = Path(tempfile.mkdtemp(prefix="fsr", dir="/tmp"))
    ports = reserve_ports(nodes=1)
    head = ports.cluster(name="ns", root=root, num_cpus=1)
    node = WorkerNode(head, "own-disk", port_base=ports.node_bases[0], num_cpus=1)
    runs = tmp_path / "runs"
    runs.mkdir()
    check = (
        "import ray; from fs_ray.storage import check_shared; "
        f"ray.init(address='127.0.0.1:{head.gcs_port}'); check_shared({str(runs)!r}); print('shared')"
    )
    try:
        up(head, quiet=True)
        env = client_env()
        before = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=300)
        assert before.returncode == 0 and "shared" in before.stdout, before.stderr[-2000:]  # one node: fine
        node.temp_dir.mkdir(parents=True, exist_ok=True)
        own_disk = f"mount -t tmpfs none {shlex.quote(str(runs))} && exec {shlex.join(node.start_command())}"
        subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", own_disk],
                       env=env, check=True, capture_output=True, timeout=120)
        after = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=300)
    finally:
        node.kill()
        down(head, quiet=True)
        shutil.rmtree(root, ignore_errors=True)
    assert after.returncode != 0
    assert "run.storage_path" in after.stderr and "is not shared: node(s)" in after.stderr, after.stderr[-2000:]
    assert not list(runs.glob(".fs_ray_shared_*")), "the marker is cleaned up"
