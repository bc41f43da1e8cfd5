"""Ray Tune sweeps end to end: a bad search space fails before any trial; a real sweep on a private
Ray cluster (every trial fine-tunes two splits through TorchTrainer + DeepSpeed) has ASHA stop the
weak trials, survives its driver being killed (Tuner.restore keeps the finished trials), and writes a
leaderboard, a plot, a ready-to-run best config and the best model's export that agree with the
trials' own results."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from fs_ray.config import ConfigError, load_config
from fs_ray.local_cluster import client_env, down, reserve_ports, up
from fs_ray.run_configs import FinetuneConfig, TuneConfig
from fs_ray.tuning.sweep import SweepError, check, max_concurrent, trial_config
from tests.task_data import _write_tasks

from .conftest import REPO

SEP_SINGLE = (
    "{shape: single, path: sep_single, text_fields: [sentence], labels: [neg, pos], "
    "verbalizer: {neg: 坏, pos: 好}, question: 这句话说的是？, splits: ['0', '1'], "
    "submission_file: sep_predict.json}"
)


def _config(tmp_path: Path, **more) -> dict:
    """A sweep on the separable single-sentence task: a good and a useless learning rate, 2 splits."""
    cfg = {
        "kind": "tune",
        "run": {"name": "sweep", "storage_path": str(tmp_path / "runs"), "seed": 0},
        "tasks": ["sep_single"],
        "splits": ["0", "1"],
        "base": {
            "task_specs": {"sep_single": yaml.safe_load(SEP_SINGLE)},
            "model": {"family": "erlangshen", "preset": "tiny"},
            "task": {"data_root": str(tmp_path / "data"), "max_len": 32},
            "methods": ["head"],
            "optim": {"lr": 2e-3, "epochs": 8, "micro_batch_size": 4, "warmup_steps": 2},
            "checkpoint": {"every_n_epochs": 4},
            "deepspeed": {"zero_stage": 1},
            "scaling": {"num_workers": 1, "cpus_per_worker": 1},
            "submission_split": "1",
        },
        # grid order is the trial order: good, useless, good again (max_concurrent_trials: 1)
        "search_space": {"optim.lr": {"type": "grid", "values": [3e-3, 1e-7, 2e-3]}},
        "search_alg": "grid",
        "num_samples": 1,
        "asha": {"enabled": True, "grace_period": 8, "reduction_factor": 2},
        "max_concurrent_trials": 1,
    }
    cfg.update(more)
    return cfg


def _load(data: dict) -> TuneConfig:
    path = Path(tempfile.mkdtemp()) / "tune.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_config(TuneConfig, path)


@pytest.mark.parametrize(
    "space, message",
    [
        ({"optim.lrr": {"type": "choice", "values": [1e-4]}}, r"(?s)search_space\.optim\.lrr = .*unknown field \(did you mean lr\?\)"),
        ({"optim.epochs": {"type": "choice", "values": [4, -1]}}, r"search_space\.optim\.epochs = -1"),
        ({"method": {"type": "choice", "values": ["head", "crf"]}}, r"search_space\.method.*crf"),
        ({"run.seed": {"type": "choice", "values": [1, 2]}}, r"search_space\.run\.seed.*fixed by the sweep"),
        ({"optim.lr": {"type": "loguniform", "low": 0.0, "high": 0.1}}, r"loguniform needs low > 0"),
        ({"optim.lr": {"type": "uniform", "low": 0.1, "high": 0.01}}, r"low \(0.1\) must be below high"),
        ({"optim.lr": {"type": "choice"}}, r"choice needs a non-empty 'values'"),
        ({}, r"search_space: .*empty"),
    ],
)
def test_bad_search_space_is_refused_naming_the_field(tmp_path, space, message):
    _write_tasks(tmp_path / "data", single_splits=("0", "1"))
    with pytest.raises((ConfigError, SweepError), match=message):
        check(_load(_config(tmp_path, search_space=space, search_alg="random")))


def test_a_generation_sweep_optimises_rouge_l_and_refuses_classification_methods(tmp_path):
    from tests.task_data import SPECS

    _write_tasks(tmp_path / "data")
    gen_spec = yaml.safe_load(next(s for s in SPECS if s.startswith("task_specs.sep_gen=")).split("=", 1)[1])
    base = _config(tmp_path)["base"] | {
        "task_specs": {"sep_gen": gen_spec},
        "model": {"family": "randeng", "preset": "tiny"},
        "tokenizer": {"source": "bert-chinese-sentinels"},
        "task": {"data_root": str(tmp_path / "data"), "max_len": 40},
        "methods": ["seq2seq"],
    }
    data = _config(tmp_path, tasks=["sep_gen"], splits=["full"], base=base)
    plans = check(_load(data))
    assert plans["sep_gen"]["specs"]["sep_gen"].metric == "rougeL"  # the dev metric every trial reports
    data["search_space"] = {"method": {"type": "choice", "values": ["seq2seq", "head"]}}
    data["search_alg"] = "random"
    with pytest.raises(SweepError, match="task sep_gen: head: a generation task needs seq2seq"):
        check(_load(data))


def test_bad_sweep_config_exits_2_before_any_trial(tmp_path):
    _write_tasks(tmp_path / "data", single_splits=("0", "1"))
    cases = {  # config -> what the message must name
        "optuna_grid": (_config(tmp_path, search_alg="optuna"), "grid needs search_alg grid or random"),
        "missing_split": (_config(tmp_path, splits=["0", "7"]), "split 7"),
        "bad_task": (_config(tmp_path, tasks=["sep_single", "no_such_task"]), "no_such_task"),
    }
    for name, (data, expected) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        proc = subprocess.run(
            [sys.executable, "tune/fewclue.py", "--config", str(path)],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, (name, proc.stdout[-2000:], proc.stderr[-2000:])
        assert "error:" in proc.stderr and expected in proc.stderr, (name, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / "runs").exists(), name  # nothing written, no cluster touched


def test_trial_config_and_concurrency(tmp_path):
    cfg = _load(
        _config(
            tmp_path,
            search_space={
                "optim.lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
                "model.overrides.hidden_dropout_prob": {"type": "uniform", "low": 0.0, "high": 0.3},
                "method": {"type": "choice", "values": ["head", "unimc"]},
            },
            search_alg="random",
            max_concurrent_trials=None,
        )
    )
    trial = trial_config(cfg, "sep_single", {"optim.lr": 4e-4, "method": "unimc",
                                              "model.overrides.hidden_dropout_prob": 0.2}, ["0"])  # fmt: skip
    assert isinstance(trial, FinetuneConfig)
    assert trial.optim.lr == 4e-4 and trial.methods == ["unimc"] and trial.task.splits == ["0"]
    assert trial.model.overrides == {"hidden_dropout_prob": 0.2} and trial.task.names == ["sep_single"]
    # trials at once: as many worker groups as the cluster holds, at least one
    assert max_concurrent(cfg, {"CPU": 2.0}) == 2
    assert max_concurrent(cfg, {"CPU": 0.5}) == 1
    gpu = cfg.model_copy(update={"base": cfg.base.model_copy(update={"scaling": cfg.base.scaling.model_copy(
        update={"use_gpu": True, "num_workers": 4, "cpus_per_worker": 8})})})  # fmt: skip
    assert max_concurrent(gpu, {"CPU": 96.0, "GPU": 8.0}) == 2  # GPUs limit: 8 / 4
    # --set reaches into a search-space entry whose key has dots
    over = load_config(TuneConfig, None, ["search_space={optim.lr: {type: grid, values: [1, 2]}}",
                                          "search_space.optim.lr.values=[3, 4]"])  # fmt: skip
    assert over.search_space["optim.lr"].values == [3, 4]


def _wait(pred, deadline_s: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    start = time.monotonic()
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"driver exited ({proc.returncode}) before {what}: {log.read_text()[-4000:]}")
        assert time.monotonic() - start < deadline_s, f"timed out waiting for {what}"
        time.sleep(1)


@pytest.mark.cluster
@pytest.mark.timeout(1500)
def test_sweep_asha_restore_leaderboard_plot_and_export(tmp_path):
    import ray
    from PIL import Image

    # One Ray instance on the machine: with a second one up (the session's in-process ray_local),
    # Ray Train's PlacementGroupCleaner fails with "Found multiple active Ray instances" and never
    # frees the CPUs of a trial ASHA stopped, so later trials time out waiting for workers.
    if ray.is_initialized():
        ray.shutdown()
    _write_tasks(tmp_path / "data", single_splits=("0", "1"))
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path), allow_unicode=True), encoding="utf-8")
    root = Path(tempfile.mkdtemp(prefix="fsr", dir="/tmp"))  # short: Ray's unix sockets
    cluster = reserve_ports().cluster(name="tune", root=root, num_cpus=2)
    env = client_env()
    env["RAY_ADDRESS"] = f"127.0.0.1:{cluster.gcs_port}"
    cmd = [sys.executable, "tune/fewclue.py", "--config", str(config)]
    sweep = tmp_path / "runs/sweep"
    trials = sweep / "sep_single/trials"
    try:
        up(cluster, quiet=True)
        # 1. start the sweep; kill its driver (SIGKILL, as a lost head-node process) once the first
        #    trial has finished, while the next one trains
        log1 = tmp_path / "driver1.log"
        with log1.open("w") as out:
            first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
            _wait(lambda: len(list(trials.glob("*/trial.json"))) >= 1, 900, "the first trial", first, log1)
            (done_before,) = list(trials.glob("*/trial.json"))
            finished_at = done_before.stat().st_mtime
            # Tune has moved on (the next trial trains) and saved its experiment state since
            _wait(lambda: len(list(trials.glob("*/train"))) >= 2, 300, "the second trial", first, log1)
            states = sweep / "sep_single/experiment"
            _wait(
                lambda: max(p.stat().st_mtime for p in states.glob("experiment_state-*.json")) > finished_at + 1,
                300, "the experiment state after the first trial", first, log1,
            )  # fmt: skip
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        assert len(list(trials.glob("*/trial.json"))) == 1 and not (sweep / "leaderboard.csv").exists()
        kept = {p: p.stat().st_mtime_ns for p in done_before.parent.rglob("*") if p.is_file()}

        # 2. the same command again: the experiment is restored, the finished trial kept
        log2 = tmp_path / "driver2.log"
        with log2.open("w") as out:
            second = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1200)
        text = log2.read_text()
        assert second.returncode == 0, text[-5000:]
        assert "resuming the sweep" in text
        # the finished trial did not run again: none of its files (results, Train runs) was touched
        assert {p: p.stat().st_mtime_ns for p in done_before.parent.rglob("*") if p.is_file()} == kept
    finally:
        down(cluster, quiet=True)
        shutil.rmtree(root, ignore_errors=True)

    # 3. ASHA stopped the useless learning rate at its first rung; both good ones completed
    rows = list(csv.DictReader((sweep / "sep_single/trials.csv").open(encoding="utf-8")))
    status = {float(r["optim.lr"]): r["status"] for r in rows}
    assert status == {3e-3: "completed", 1e-7: "stopped", 2e-3: "completed"}, rows
    stopped = next(r for r in rows if r["status"] == "stopped")
    assert int(stopped["epochs_total"]) < 16 and int(stopped["splits_done"]) == 0

    # 4. each completed trial's dev_mean is the mean of its splits' own metrics.json values
    summaries = {}
    for path in trials.glob("*/trial.json"):
        s = json.loads(path.read_text())
        values = [
            json.loads((path.parent / f"sep_single/head/split_{k}/metrics.json").read_text())["value"]
            for k in ("0", "1")
        ]
        assert s["dev_mean"] == pytest.approx(statistics.fmean(values))
        assert s["values"] == {"0": values[0], "1": values[1]}
        summaries[s["trial_id"]] = s
    assert len(summaries) == 2 and {r["trial_id"] for r in rows if r["status"] == "completed"} == set(summaries)
    for r in rows:
        if r["status"] == "completed":
            assert float(r["dev_mean"]) == pytest.approx(summaries[r["trial_id"]]["dev_mean"])
            assert int(r["steps_total"]) == summaries[r["trial_id"]]["steps_total"] > 0

    # 5. the leaderboard names the best completed trial, with its mean ± std and the compute used
    (board,) = list(csv.DictReader((sweep / "leaderboard.csv").open(encoding="utf-8")))
    top = max(s["dev_mean"] for s in summaries.values())
    assert board["best_trial"] in {t for t, s in summaries.items() if s["dev_mean"] == top}  # ties: either
    best = summaries[board["best_trial"]]
    assert float(board["dev_mean"]) == pytest.approx(best["dev_mean"], abs=1e-6)
    assert float(board["dev_std"]) == pytest.approx(statistics.stdev(best["values"].values()), abs=1e-6)
    assert (board["trials"], board["completed"], board["stopped"]) == ("3", "2", "1")
    assert int(board["steps"]) == sum(int(r["steps_total"]) for r in rows)
    assert best["dev_mean"] >= 0.75  # chance is 0.5: the sweep's winner learned the task
    md = (sweep / "leaderboard.md").read_text(encoding="utf-8")
    assert f"| sep_single | optim.lr={best['params']['optim.lr']:.4g} |" in md

    # 6. the plot exists; the best config is a ready-to-run finetune config; its export loads
    with Image.open(sweep / "sep_single/sweep.png") as img:
        assert img.format == "PNG" and img.size[0] >= 600
    best_cfg = load_config(FinetuneConfig, sweep / "sep_single/best_finetune.yaml")
    assert best_cfg.optim.lr == best["params"]["optim.lr"] and best_cfg.task.names == ["sep_single"]
    export = sweep / "sep_single/best/sep_single/head/split_1/export"
    card = json.loads((export / "fs_ray_task.json").read_text())
    assert card["labels"] == ["neg", "pos"] and (export / "model.safetensors").exists()
    assert (sweep / "sep_single/best/submission/head/sep_predict.json").exists()
