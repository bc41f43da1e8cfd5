"""Fine-tuning end to end on a private Ray cluster: every head and UniMC learn tiny separable
tasks through real TorchTrainer + DeepSpeed runs; results, predictions, submissions and exports
agree with each other."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fs_ray.config import load_config
from fs_ray.data.encoding import Encoder, collate_rows, encode_head
from fs_ray.data.tasks import load_split
from fs_ray.data.tokenization import load_tokenizer
from fs_ray.run_configs import FinetuneConfig
from fs_ray.training.finetune import run
from tests.faults import WorkerKiller, checkpoint_registered
from tests.task_data import SPECS, _write_tasks


def _cfg(tmp_path: Path, *more: str) -> FinetuneConfig:
    return load_config(
        FinetuneConfig,
        None,
        [
            *SPECS,
            f"task.data_root={tmp_path / 'data'}",
            f"run.storage_path={tmp_path / 'runs'}",
            "run.name=sep",
            "task.max_len=32",
            "optim.lr=2e-3",
            "optim.epochs=16",
            "optim.micro_batch_size=4",
            "optim.warmup_steps=2",
            "submission_split=0",
            "checkpoint.every_n_epochs=4",
            *more,
        ],
    )


def test_heads_and_unimc_learn_separable_tasks(ray_local, tmp_path):
    _write_tasks(tmp_path / "data")
    cfg = _cfg(
        tmp_path,
        "task.names=[sep_single, sep_choice, sep_tag]",
        "methods=[head, tfidf]",
        "scaling.num_workers=2",
        "deepspeed.zero_stage=1",
    )
    result = run(cfg, log=print)
    run_dir = Path(result["run_dir"])
    values = {(r["task"], r["method"]): r["value"] for r in result["records"]}
    assert values[("sep_single", "head")] >= 0.8, values  # chance 0.5
    assert values[("sep_choice", "head")] >= 0.6, values  # chance 0.25
    assert values[("sep_tag", "head")] >= 0.5, values  # entity F1
    assert set(values) == {(t, m) for t in ("sep_single", "sep_choice", "sep_tag") for m in ("head", "tfidf")}

    # the table, the per-run metrics and the prediction files agree
    rows = list(csv.DictReader((run_dir / "results.csv").open(encoding="utf-8")))
    assert {(r["task"], r["method"]): float(r["value"]) for r in rows} == pytest.approx(values)
    preds = [
        json.loads(x)
        for x in (run_dir / "sep_single/head/split_0/dev_predictions.jsonl").read_text().splitlines()
    ]
    assert sum(p["gold"] == p["pred"] for p in preds) / len(preds) == pytest.approx(
        values[("sep_single", "head")]
    )
    assert "| sep_single | head | accuracy |" in (run_dir / "results.md").read_text(encoding="utf-8")
    metrics = json.loads((run_dir / "sep_single/head/split_0/metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [4, 8, 12, 16]

    # FewCLUE-style submission: one {"id", "label"} line per test record, labels from the set
    sub = [json.loads(x) for x in (run_dir / "submission/head/sep_predict.json").read_text().splitlines()]
    test_ids = [
        json.loads(x)["id"] for x in (tmp_path / "data/sep_single/test.json").read_text().splitlines()
    ]
    assert [s["id"] for s in sub] == test_ids and all(set(s) == {"id", "label"} for s in sub)
    assert {s["label"] for s in sub} <= {"neg", "pos"}

    # the exported classifier loads with transformers and reproduces the run's dev predictions
    from transformers import AutoModelForSequenceClassification

    export = run_dir / "sep_single/head/split_0/export"
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    card = json.loads((export / "fs_ray_task.json").read_text())
    assert card["labels"] == ["neg", "pos"] and model.config.id2label == {0: "neg", 1: "pos"}
    split = load_split("sep_single", cfg_spec(cfg, "sep_single"), str(tmp_path / "data"), "0")
    enc = Encoder(load_tokenizer(str(export)), card["max_len"], card["truncation"])
    batch = collate_rows(
        {
            k: np.stack([r[k] for r in encode_head(split, split.dev, enc, True)])
            for k in ("input_ids", "attention_mask", "token_type_ids")
        }
    )
    with torch.no_grad():
        logits = model(**batch).logits
    assert [model.config.id2label[int(i)] for i in logits.argmax(-1)] == [p["pred"] for p in preds]

    # jobs/evaluate.py on the export (no training) scores dev exactly as the fine-tuning run did
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "evaluate_job", Path(__file__).parents[1] / "jobs/evaluate.py"
    )
    evaluate_job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate_job)
    implied = evaluate_job.card_defaults([f"model.from_pretrained={export}"])
    assert (
        "methods=[head]" in implied and "task.names=[sep_single]" in implied and "optim.epochs=0" in implied
    )
    # given relative to the driver's working directory, as users type it (workers run elsewhere)
    relative = os.path.relpath(export)
    ev = run(_cfg(tmp_path, f"model.from_pretrained={relative}", *implied), log=print)
    (ev_record,) = ev["records"]
    assert ev_record["history"] == [] and ev_record["value"] == pytest.approx(values[("sep_single", "head")])

    # rerunning the same command reuses every finished run instead of training again
    lines: list[str] = []
    again = run(cfg, log=lines.append)
    assert sum("reusing" in x for x in lines) == 6
    assert [r["value"] for r in again["records"]] == [r["value"] for r in result["records"]]


def cfg_spec(cfg: FinetuneConfig, name: str):
    from fs_ray.data.tasks import TaskSpec

    return TaskSpec.model_validate(cfg.task_specs[name])


def test_unimc_trains_through_the_mlm_head_and_scores_zero_shot(ray_local, tmp_path):
    _write_tasks(tmp_path / "data", n_single=64)
    cfg = _cfg(tmp_path, "task.names=[sep_single]", "methods=[unimc_zero, unimc]", "scaling.num_workers=1")
    result = run(cfg, log=print)
    runs = {r["method"]: r for r in result["records"]}
    # few-shot: the option scores fit the training set (a tiny model trained from scratch does not
    # generalise UniMC on 64 examples; a pretrained MLM is what makes it work, see the README)
    history = runs["unimc"]["history"]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"], history
    assert runs["unimc_zero"]["history"] == []  # zero-shot: no training, only scoring
    lines = (Path(result["run_dir"]) / "sep_single/unimc_zero/split_0/dev_predictions.jsonl").read_text()
    preds = [json.loads(x) for x in lines.splitlines()]
    assert len(preds) == 32 and all(len(p["scores"]) == 2 for p in preds)
    assert all(p["pred"] == ["neg", "pos"][int(np.argmax(p["scores"]))] for p in preds)


def test_killed_worker_resumes_at_the_last_evaluated_epoch(ray_local, tmp_path):
    """A worker process is SIGKILLed from outside once Ray Train has registered the epoch-2
    checkpoint; the run resumes from a registered checkpoint, not from scratch, and every
    evaluation is in the history once."""
    _write_tasks(tmp_path / "data", n_single=64)
    # 64 rows / batch 4 = 16 steps per epoch; a checkpoint (and dev evaluation) every 2 epochs
    cfg = _cfg(
        tmp_path,
        "task.names=[sep_single]",
        "methods=[head]",
        "optim.epochs=12",
        "checkpoint.every_n_epochs=2",
        "checkpoint.max_failures=1",
    )
    train_dir = tmp_path / "runs" / cfg.run.name / "train"


    killer = WorkerKiller(checkpoint_registered(train_dir))
    killer.start()
    try:
        result = run(cfg, log=print)
    finally:
        killer.stop()
    assert killer.killed, "no worker was killed"
    (record,) = result["records"]
    assert record["resumed_from_epoch"] in (2, 4, 6, 8, 10)
    assert [h["epoch"] for h in record["history"]] == [2, 4, 6, 8, 10, 12]


def test_a_run_waiting_for_cpus_says_what_it_asked_for_and_starts_once_they_free(ray_local, tmp_path):
    """Every CPU is held by another actor: past scaling.wait_warning_s the run says what it asked
    for and what is free; once the holder goes, the same run starts and finishes."""
    import threading
    import time

    import ray

    @ray.remote(num_cpus=2)
    class Squatter:
        def ready(self) -> bool:
            return True

    squatter = Squatter.remote()
    ray.get(squatter.ready.remote())
    _write_tasks(tmp_path / "data", n_single=16)
    cfg = _cfg(tmp_path, "task.names=[sep_single]", "methods=[head]", "optim.epochs=1",
               "scaling.num_workers=1", "scaling.wait_warning_s=2")  # fmt: skip
    lines: list[str] = []

    def release_when_said() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("waiting for resources" in x for x in lines):
            time.sleep(0.2)
        ray.kill(squatter)

    releaser = threading.Thread(target=release_when_said, daemon=True)
    releaser.start()
    result = run(cfg, log=lines.append)
    releaser.join(timeout=5)
    message = next(x for x in lines if "waiting for resources" in x)
    assert "asks for 1 worker(s) x 1 CPU" in message and "0 of 2 CPU free" in message, message
    assert "to free them" in message
    (record,) = result["records"]
    assert record["history"], "the run started once the CPUs were free"
