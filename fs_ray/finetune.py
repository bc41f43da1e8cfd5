"""Fine-tuning and evaluation: every task x method x split of a run, one results table.

Each neural run (``head``, ``unimc``, ``unimc_zero``) is its own Ray Train ``TorchTrainer`` with
the same DeepSpeed engine code as pretraining (:func:`fs_ray.training.make_engine`): the encoded
training rows stream to the workers through Ray Data, dev is evaluated on every worker's share
every ``checkpoint.every_n_epochs`` and checkpointed, so a killed worker or driver resumes at the
last evaluated epoch. The TF-IDF floor runs as a Ray task in its turn (all at once they would starve the trainers).

Run folder (``<storage_path>/<run.name>/``)::

    config.yaml                      the resolved config
    results.csv / results.md         task x method x split, and mean ± std over splits
    submission/<method>/<file>       FewCLUE leaderboard files from ``submission_split``
    <task>/<method>/split_<k>/       metrics.json, dev/test predictions, export/ (HF folder)
    train/                           Ray Train's own run folders (checkpoints)

A task/method/split whose ``metrics.json`` exists is reused, so rerunning the same command after
an interruption continues where it stopped (``overwrite: true`` recomputes).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

from fs_ray import storage
from fs_ray.assets import resolve_path
from fs_ray.config import to_yaml
from fs_ray.encoding import Encoder, decode, encode_head, encode_unimc, gold_of, score_labels
from fs_ray.run_configs import FinetuneConfig
from fs_ray.tasks import TaskDataError, TaskSpec, TaskSplit, load_split, task_spec
from fs_ray.training import FAIL_ENV

TASK_FILE = "fs_ray_task.json"
NEURAL = ("head", "unimc", "unimc_zero")


class FinetuneError(RuntimeError):
    """A run that cannot start; the message names the field or file to fix."""


def _specs(cfg: FinetuneConfig) -> dict[str, TaskSpec]:
    custom = {k: TaskSpec.model_validate(v) for k, v in cfg.task_specs.items()}
    try:
        return {name: task_spec(name, custom) for name in cfg.task.names}
    except TaskDataError as err:
        raise FinetuneError(f"task.names: {err}") from None


def splits_of(cfg: FinetuneConfig, spec: TaskSpec) -> list[str]:
    return list(cfg.task.splits or spec.splits)


def load_tokenizer_for(cfg: FinetuneConfig):
    from fs_ray.tokenization import load_tokenizer

    if cfg.model.from_pretrained:
        return load_tokenizer(resolve_path(cfg.model.from_pretrained))
    return load_tokenizer(cfg.tokenizer.source, cfg.tokenizer.lowercase)


def plan(cfg: FinetuneConfig) -> dict[str, Any]:
    """Everything checked before the cluster is touched: tasks, every split's files and labels,
    methods vs. task shapes, the starting model, the vocabulary, precision vs. hardware."""
    from fs_ray.training import resolve_precision

    specs = _specs(cfg)
    for name, spec in specs.items():
        if spec.shape == "tagging" and any(m.startswith("unimc") for m in cfg.for_task(name).methods):
            raise FinetuneError(f"methods: UniMC scores options; task {name} is tagging (use head or tfidf)")
    if cfg.model.from_pretrained and not os.path.isdir(resolve_path(cfg.model.from_pretrained)):
        raise FinetuneError(f"model.from_pretrained: {cfg.model.from_pretrained} is not a folder")
    if cfg.model.family not in ("erlangshen", "zhouwenwang") and not cfg.model.from_pretrained:
        raise FinetuneError(
            f"model.family: fine-tuning from scratch supports BERT-style encoders, not {cfg.model.family}"
        )
    try:
        resolve_precision(cfg.deepspeed.precision, cfg.scaling.use_gpu)
    except ValueError as err:
        raise FinetuneError(str(err)) from None
    try:
        tokenizer = load_tokenizer_for(cfg)
    except (OSError, ValueError) as err:
        raise FinetuneError(f"tokenizer: {err}") from None
    splits: dict[str, dict[str, TaskSplit]] = {}
    for name, spec in specs.items():
        splits[name] = {}
        tcfg = cfg.for_task(name)
        for split in splits_of(tcfg, spec):
            try:
                splits[name][split] = load_split(
                    name, spec, tcfg.task.data_root, split, tcfg.task.max_bad_fraction
                )
            except (TaskDataError, OSError) as err:
                raise FinetuneError(f"task {name}, split {split}: {err}") from None
    if any(m in NEURAL for m in cfg.methods):
        Encoder(tokenizer, cfg.task.max_len, cfg.task.truncation)  # vocabulary has what we need
    return {"specs": specs, "splits": splits, "tokenizer": tokenizer, "run_dir": _run_dir(cfg)}


def _run_dir(cfg: FinetuneConfig) -> str:
    out = resolve_path(cfg.run.output_dir())
    return out if storage.is_uri(out) else os.path.abspath(out)


# ---------------------------------------------------------------------------------------------
# worker side
# ---------------------------------------------------------------------------------------------
def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items() if k not in ("row", "uid")}


def _payload(method: str, shape: str, batch: dict, out) -> list:
    """Per row, what the driver needs: label/candidate logits, tag ids, or (option, score) pairs."""
    res = []
    for j, uid in enumerate(batch["uid"].tolist()):
        if method.startswith("unimc"):
            opts = batch["option_ids"][j].tolist()
            res.append((uid, [(o, float(s)) for o, s in zip(opts, out[j].tolist(), strict=True) if o >= 0]))
        elif shape == "tagging":
            n = int(batch["attention_mask"][j].sum()) - 2
            res.append((uid, out[j, 1 : 1 + n].argmax(-1).tolist()))
        else:
            res.append((uid, out[j].tolist()))
    return res


def _evaluate(engine, name: str, config: dict, rank: int, world: int) -> dict[int, Any]:
    """Every worker scores the rows ``uid % world == rank``, in the same number of forward passes
    (ZeRO-3 gathers parameters collectively), then all outputs are gathered on every worker."""
    import numpy as np
    import ray.train
    import torch
    import torch.distributed as dist

    from fs_ray.encoding import collate_rows

    n_rows = config[f"{name}_rows"]
    if n_rows == 0:
        return {}
    mine: dict[str, list] = {}
    fallback = None
    for b in ray.train.get_dataset_shard(name).iter_batches(batch_size=256, batch_format="numpy"):
        if fallback is None:
            fallback = {k: v[:1] for k, v in b.items()}
        keep = b["uid"] % world == rank
        for k, v in b.items():
            mine.setdefault(k, []).append(v[keep])
    cols = {k: np.concatenate(v) for k, v in mine.items()}
    n_mine = len(cols["uid"])
    if n_mine == 0:
        cols, n_mine = fallback, 0
    bs = config["eval_batch_size"]
    n_batches = math.ceil(math.ceil(n_rows / world) / bs)
    out: list = []
    module = engine.module
    module.eval()
    with torch.no_grad():
        for i in range(n_batches):
            # ranks with fewer rows repeat one so every rank runs the same forward passes
            lo = i * bs if i * bs < n_mine else 0
            batch = collate_rows({k: v[lo : lo + bs] for k, v in cols.items()})
            logits = module.logits(**_to(batch, engine.device)).float().cpu()
            if i * bs < n_mine:
                out.extend(_payload(config["method"], config["shape"], batch, logits))
    module.train()
    gathered = [out]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, out)
    return {uid: payload for part in gathered for uid, payload in part}


def _dev_metric(config: dict, outputs: dict[int, Any]) -> dict[str, float]:
    preds, _ = decode(
        config["shape"], config["method"], config["labels"], len(config["dev_gold"]), outputs,
        config["dev_row_of"], config["dev_lengths"],
    )  # fmt: skip
    return score_labels(config["metric"], config["dev_gold"], preds)


def _quiet_data() -> None:
    """Ray Data's per-dataset progress bars drown the training log for many small datasets."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def finetune_loop(config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train worker: build, (resume,) train for the planned epochs, evaluate, predict."""
    import ray.train
    import torch

    from fs_ray.encoding import collate_rows
    from fs_ray.models import HeadObjective, UniMCObjective, build_task_model
    from fs_ray.training import _maybe_fail, make_engine

    _quiet_data()
    cfg = FinetuneConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    on_gpu = cfg.scaling.use_gpu and torch.cuda.is_available()
    torch.manual_seed(cfg.run.seed)
    method, shape = config["method"], config["shape"]
    model = build_task_model(
        cfg.model, method, shape, config["labels"], config["vocab_size"], cfg.task.max_len, config["special"]
    )
    module = UniMCObjective(model, config["yes_id"]) if method.startswith("unimc") else HeadObjective(model)
    engine = make_engine(module, cfg, world, on_gpu, total_steps=max(1, config["total_steps"]))

    epoch, history, resumed_from = 0, [], None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            _, client = engine.load_checkpoint(d, tag="deepspeed")
        epoch, history = int(client["epoch"]), list(client["history"])
        resumed_from = epoch
        if rank == 0:
            print(f"[finetune] {config['label']}: resumed after epoch {epoch}", flush=True)

    epochs = config["epochs"]
    every = cfg.checkpoint.every_n_epochs
    shard = ray.train.get_dataset_shard("train") if epochs else None
    steps_left = config["total_steps"] - epoch * config["steps_per_epoch"]
    t0 = time.monotonic()
    dev = None
    while epoch < epochs and steps_left > 0:
        losses = []
        for batch in shard.iter_torch_batches(
            batch_size=cfg.optim.micro_batch_size,
            collate_fn=collate_rows,
            local_shuffle_buffer_size=max(config["train_rows"], 1),
            local_shuffle_seed=cfg.run.seed * 1000 + epoch,
        ):
            if steps_left <= 0:
                break
            _maybe_fail(config["total_steps"] - steps_left, rank, config["marker_dir"])
            loss = engine(**_to(batch, engine.device))
            engine.backward(loss)
            engine.step()
            losses.append(float(loss))
            steps_left -= 1
        epoch += 1
        if epoch % every == 0 or epoch >= epochs or steps_left <= 0:
            dev = _evaluate(engine, "dev", config, rank, world)
            metrics = _dev_metric(config, dev)
            record = {
                "epoch": epoch,
                "step": config["total_steps"] - steps_left,
                "train_loss": sum(losses) / max(1, len(losses)),
                **{f"dev_{k}": v for k, v in metrics.items()},
            }
            history.append(record)
            if rank == 0:
                print(
                    f"[finetune] {config['label']}: epoch {epoch}/{epochs}  loss {record['train_loss']:.4f}  "
                    + "  ".join(f"dev {k} {v:.4f}" for k, v in metrics.items())
                    + f"  ({time.monotonic() - t0:.0f}s)",
                    flush=True,
                )
            _report(engine, model, rank, {"epoch": epoch, "history": history}, record, cfg, export=False)

    if dev is None:  # zero-shot, or resumed after the last evaluation
        dev = _evaluate(engine, "dev", config, rank, world)
    test = _evaluate(engine, "test", config, rank, world)
    if config["export"]:
        final = {"epoch": epoch, "history": history}
        _report(engine, model, rank, final, {"epoch": epoch, "final": 1}, cfg, export=True, config=config)
    if rank == 0:
        return {
            "dev": dev,
            "test": test,
            "history": history,
            "epochs_done": epoch,
            "resumed_from": resumed_from,
        }
    return None


def _report(engine, model, rank, state, metrics, cfg, export: bool, config: dict | None = None) -> None:
    import contextlib

    import ray.train

    tmp = tempfile.mkdtemp(prefix="fs_ray_ft_")
    try:
        engine.save_checkpoint(tmp, tag="deepspeed", client_state=state)
        if export:
            gather = contextlib.nullcontext()
            if cfg.deepspeed.zero_stage == 3:
                import deepspeed

                gather = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
            with gather:
                if rank == 0:
                    hf = os.path.join(tmp, "hf")
                    model.save_pretrained(hf, safe_serialization=True)
                    with open(os.path.join(hf, "tokenizer.json"), "w", encoding="utf-8") as f:
                        f.write(config["tokenizer_json"])
                    with open(os.path.join(hf, TASK_FILE), "w", encoding="utf-8") as f:
                        json.dump(config["task_card"], f, ensure_ascii=False, indent=2)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------------------------
def _rows(
    split: TaskSplit, examples, enc: Encoder, method: str, labelled: bool, train: bool, cfg
) -> list[dict]:
    if method.startswith("unimc"):
        rows = encode_unimc(split, examples, enc, labelled, train, cfg.task.unimc_max_options, cfg.run.seed)
    else:
        rows = encode_head(split, examples, enc, labelled)
    for uid, row in enumerate(rows):
        row["uid"] = uid
    return rows


def run_neural(
    cfg: FinetuneConfig,
    split: TaskSplit,
    method: str,
    tokenizer,
    out_dir: str,
    export: bool,
    log=print,
    predict_test: bool = True,
    callbacks: list | None = None,
):
    """One TorchTrainer run; returns (dev predictions, dev scores, test predictions, history, seconds).
    ``callbacks``: Ray Train callbacks of the run (a Tune sweep passes its report callback)."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    enc = Encoder(tokenizer, cfg.task.max_len, cfg.task.truncation)
    train_rows = _rows(split, split.train, enc, method, True, True, cfg) if method != "unimc_zero" else []
    dev_rows = _rows(split, split.dev, enc, method, True, False, cfg)
    tests = split.test if predict_test else []
    test_rows = _rows(split, tests, enc, method, split.spec.test_labelled, False, cfg)
    world = cfg.scaling.num_workers
    epochs = 0 if method == "unimc_zero" else math.ceil(cfg.optim.epochs)
    if epochs and len(train_rows) < world:
        raise FinetuneError(
            f"{split.name} split {split.split}: {len(train_rows)} training rows for {world} workers"
        )
    per_rank = len(train_rows) // world
    steps_per_epoch = math.ceil(per_rank / cfg.optim.micro_batch_size) if epochs else 0
    total_steps = round(cfg.optim.epochs * steps_per_epoch) if epochs else 0
    label = f"{split.name}/{method}/split_{split.split}"
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    from fs_ray.tokenization import special_ids

    worker_cfg = cfg.model_dump(mode="json")
    start = cfg.model.from_pretrained
    if start and not storage.is_uri(start):  # workers run in their own working directories
        worker_cfg["model"]["from_pretrained"] = os.path.abspath(resolve_path(start))
    config = {
        "cfg": worker_cfg,
        "method": method,
        "shape": split.spec.shape,
        "labels": split.labels,
        "metric": split.spec.metric,
        "label": label,
        "vocab_size": vocab,
        "special": special_ids(tokenizer).as_dict(),
        "yes_id": enc.yes,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "train_rows": len(train_rows),
        "dev_rows": len(dev_rows),
        "test_rows": len(test_rows),
        "eval_batch_size": cfg.optim.eval_batch_size,
        "dev_gold": gold_of(split, split.dev),
        "dev_row_of": [int(r["row"]) for r in dev_rows],
        "dev_lengths": [len(ex.texts[0]) for ex in split.dev],
        "export": export,
        "marker_dir": _run_dir(cfg) if not storage.is_uri(_run_dir(cfg)) else tempfile.gettempdir(),
        "tokenizer_json": tokenizer.to_str(),
        "task_card": {
            "task": split.name,
            "method": method,
            "shape": split.spec.shape,
            "labels": split.labels,
            "verbalizer": split.verbalizer,
            "question": split.spec.question,
            "max_len": cfg.task.max_len,
            "truncation": cfg.task.truncation,
            "trained_on": f"{split.spec.train_file.format(split=split.split)}",
        },
    }
    datasets = {
        "train": ray.data.from_items(train_rows or [{"uid": 0}]),
        "dev": ray.data.from_items(dev_rows or [{"uid": 0}]),
        "test": ray.data.from_items(test_rows or [{"uid": 0}]),
    }
    train_dir = storage.join(_run_dir(cfg), "train")
    run_name = f"{cfg.run.name}-{split.name}-{method}-{split.split}"
    if cfg.overwrite and storage.exists(storage.join(train_dir, run_name)):
        storage.remove_tree(storage.join(train_dir, run_name))  # start over instead of resuming
    t = time.monotonic()
    log(
        f"[finetune] {label}: {len(split.train)} train / {len(split.dev)} dev / {len(tests)} test records, "
        f"{epochs} epoch(s) x {steps_per_epoch} steps on {world} worker(s)"
    )
    trainer = TorchTrainer(
        finetune_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=world,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker, **cfg.scaling.resources_per_worker},
            placement_strategy=cfg.scaling.placement_strategy,
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(
            name=run_name,
            storage_path=train_dir,
            failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep_last),
            callbacks=callbacks,
            # the fault-injection hook set on the driver (or the job) reaches the workers
            worker_runtime_env={"env_vars": {FAIL_ENV: os.environ[FAIL_ENV]}}
            if os.environ.get(FAIL_ENV)
            else None,
        ),
    )
    result = trainer.fit()
    out = result.return_value
    dev_pred, dev_scores = decode(
        split.spec.shape,
        method,
        split.labels,
        len(split.dev),
        out["dev"],
        config["dev_row_of"],
        config["dev_lengths"],
    )
    test_pred, _ = decode(
        split.spec.shape, method, split.labels, len(tests), out["test"],
        [int(r["row"]) for r in test_rows], [len(ex.texts[0]) for ex in tests],
    )  # fmt: skip
    if export and result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            _copy_tree(os.path.join(d, "hf"), storage.join(out_dir, "export"))
    extra = {"resumed_from_epoch": out["resumed_from"]} if out["resumed_from"] is not None else {}
    return dev_pred, dev_scores, test_pred, out["history"], time.monotonic() - t, extra


def _copy_tree(src: str, dst: str) -> None:
    if storage.is_uri(dst):
        import pyarrow.fs as pafs

        fs, path = storage.resolve(dst)
        pafs.copy_files(src, path, destination_filesystem=fs)
    else:
        shutil.copytree(src, dst, dirs_exist_ok=True)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def run_split(
    cfg,
    split: TaskSplit,
    method: str,
    tokenizer,
    run_dir: str,
    log=print,
    tfidf_future=None,
    predict_test: bool = True,
    callbacks: list | None = None,
) -> dict:
    """One task/method/split: train (or fit), score dev, predict test when ``predict_test`` (the
    submission split, or a labelled test set); write metrics and predictions; reuse if done."""
    out_dir = storage.join(run_dir, split.name, method, f"split_{split.split}")
    metrics_path = storage.join(out_dir, "metrics.json")
    if storage.exists(metrics_path) and not cfg.overwrite:
        cached = json.loads(storage.read_text(metrics_path))
        log(f"[finetune] {split.name}/{method}/split_{split.split}: reusing {metrics_path}")
        return cached
    history: list = []
    extra: dict = {}
    dev_scores: list = [None] * len(split.dev)
    if method == "tfidf":
        import ray

        t = time.monotonic()
        preds = ray.get(tfidf_future())
        dev_pred, test_pred, seconds = preds["dev"], preds["test"], preds.get("seconds", time.monotonic() - t)
    else:
        export = cfg.export == "all" or (cfg.export == "submission" and predict_test)
        dev_pred, dev_scores, test_pred, history, seconds, extra = run_neural(
            cfg, split, method, tokenizer, out_dir, export, log, predict_test, callbacks
        )
    gold = gold_of(split, split.dev)
    metrics = score_labels(split.spec.metric, gold, dev_pred)
    record = {
        "task": split.name,
        "method": method,
        "split": split.split,
        "metric": split.spec.metric,
        "value": metrics[split.spec.metric],
        "metrics": metrics,
        "train_examples": len(split.train),
        "dev_examples": len(split.dev),
        "seconds": round(seconds, 1),
        "history": history,
        **extra,
        "skipped": {r.path: {**r.skipped, **r.bad} for r in split.reports if r.skipped or r.bad},
    }
    tests = split.test if predict_test else []
    test_pred = test_pred[: len(tests)]
    if split.spec.test_labelled and tests:
        record["test_metrics"] = score_labels(split.spec.metric, gold_of(split, split.test), test_pred)
    storage.write_text(
        storage.join(out_dir, "dev_predictions.jsonl"),
        _jsonl(
            [
                {"id": ex.id, "gold": g, "pred": p, **({"scores": s} if s else {})}
                for ex, g, p, s in zip(split.dev, gold, dev_pred, dev_scores, strict=True)
            ]
        ),
    )
    storage.write_text(
        storage.join(out_dir, "test_predictions.jsonl"),
        _jsonl([{"id": ex.id, "pred": p} for ex, p in zip(tests, test_pred, strict=True)]),
    )
    storage.write_text(metrics_path, json.dumps(record, ensure_ascii=False, indent=2))
    log(
        f"[finetune] {split.name}/{method}/split_{split.split}: dev {split.spec.metric} "
        f"{record['value']:.4f} ({record['seconds']:.0f}s)"
    )
    return record


def _tfidf_task(split: TaskSplit) -> dict:
    from fs_ray.baseline import tfidf_predict

    t = time.monotonic()
    return {**tfidf_predict(split), "seconds": time.monotonic() - t}


def summarize(records: list[dict]) -> list[dict]:
    """Per task x method: mean ± std over the numbered splits, plus few_all / full on their own."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    rows = []
    for (task, method), rs in groups.items():
        numbered = [r["value"] for r in rs if r["split"].isdigit()]
        other = {r["split"]: r["value"] for r in rs if not r["split"].isdigit()}
        rows.append(
            {
                "task": task,
                "method": method,
                "metric": rs[0]["metric"],
                "splits": len(numbered),
                "mean": statistics.fmean(numbered) if numbered else None,
                "std": statistics.stdev(numbered) if len(numbered) > 1 else (0.0 if numbered else None),
                **other,
                "seconds": round(sum(r["seconds"] for r in rs), 1),
            }
        )
    return rows


def results_markdown(summary: list[dict], records: list[dict]) -> str:
    def pct(v):
        return "" if v is None else f"{100 * v:.1f}"

    extra = sorted(
        {k for s in summary for k in s} - {"task", "method", "metric", "splits", "mean", "std", "seconds"}
    )
    lines = [
        "| task | method | metric | mean ± std over splits 0-4 | "
        + "".join(f"{k} | " for k in extra)
        + "compute (s) |",
        "|---|---|---|---:|" + "---:|" * len(extra) + "---:|",
    ]
    for s in summary:
        spread = f"{pct(s['mean'])} ± {pct(s['std'])} (n={s['splits']})" if s["mean"] is not None else ""
        cells = "".join(f"{pct(s.get(k))} | " for k in extra)
        lines.append(
            f"| {s['task']} | {s['method']} | {s['metric']} | {spread} | {cells}{s['seconds']:.0f} |"
        )
    tasks = {s["task"] for s in summary}
    methods = sorted({s["method"] for s in summary})
    if len(tasks) > 1:
        lines.append("")
        lines.append("| average over tasks | " + " | ".join(methods) + " |")
        lines.append("|---|" + "---:|" * len(methods))

        def main_value(s):
            return (
                s["mean"]
                if s["mean"] is not None
                else next((s[k] for k in extra if s.get(k) is not None), None)
            )

        avg = []
        for m in methods:
            vals = [main_value(s) for s in summary if s["method"] == m]
            vals = [v for v in vals if v is not None]
            avg.append(pct(statistics.fmean(vals)) + f" ({len(vals)} tasks)" if vals else "")
        lines.append("| score | " + " | ".join(avg) + " |")
    labelled = [r for r in records if r.get("test_metrics")]
    if labelled:
        lines += ["", "| task | method | split | test " + labelled[0]["metric"] + " |", "|---|---|---|---:|"]
        for r in labelled:
            lines.append(
                f"| {r['task']} | {r['method']} | {r['split']} | {pct(r['test_metrics'][r['metric']])} |"
            )
    return "\n".join(lines) + "\n"


def write_results(run_dir: str, records: list[dict]) -> list[dict]:
    summary = summarize(records)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        ["task", "method", "split", "metric", "value", "train_examples", "dev_examples", "seconds"]
    )
    for r in records:
        writer.writerow(
            [
                r["task"],
                r["method"],
                r["split"],
                r["metric"],
                f"{r['value']:.6f}",
                r["train_examples"],
                r["dev_examples"],
                r["seconds"],
            ]
        )
    storage.write_text(storage.join(run_dir, "results.csv"), buf.getvalue())
    storage.write_text(storage.join(run_dir, "results.md"), results_markdown(summary, records))
    return summary


def write_submission(run_dir: str, split: TaskSplit, method: str) -> str | None:
    """FewCLUE's format: one ``{"id": ..., "<key>": ...}`` line per test record, named as FewCLUE expects."""
    spec = split.spec
    if not spec.submission_file or not split.test:
        return None
    src = storage.join(run_dir, split.name, method, f"split_{split.split}", "test_predictions.jsonl")
    if not storage.exists(src):
        return None
    preds = [json.loads(line) for line in storage.read_text(src).splitlines() if line.strip()]
    lines = []
    for p in preds:
        value: Any = p["pred"]
        if spec.submission_key == "answer":
            value = int(value)
        lines.append({"id": p["id"], spec.submission_key: value})
    dst = storage.join(run_dir, "submission", method, spec.submission_file)
    storage.write_text(dst, _jsonl(lines))
    return dst


def run(cfg: FinetuneConfig, log=print) -> dict[str, Any]:
    """Run every task x method x split of the config on the current Ray cluster."""
    import ray

    p = plan(cfg)
    run_dir = p["run_dir"]
    storage.write_text(
        storage.join(run_dir, "config.yaml"), f"# resolved {type(cfg).__name__}\n" + to_yaml(cfg)
    )
    if not ray.is_initialized():
        ray.init()
    try:
        storage.check_shared(run_dir)  # multi-node: every worker must reach the checkpoints
    except storage.StorageError as err:
        raise FinetuneError(str(err)) from None
    _quiet_data()
    n_runs = sum(len(s) * len(cfg.for_task(n).methods) for n, s in p["splits"].items())
    log(
        f"[finetune] {len(p['specs'])} task(s) x method(s) ({', '.join(cfg.methods)}) = {n_runs} runs "
        f"from {cfg.model.from_pretrained or f'scratch ({cfg.model.family}/{cfg.model.preset})'} -> {run_dir}"
    )
    tfidf = ray.remote(num_cpus=1)(_tfidf_task)
    # One TF-IDF task at a time, when its turn comes: submitted all at once, they would hold every
    # CPU and starve the next TorchTrainer's worker group (its start times out after 60 s).
    records, submissions = [], []
    for name, splits in p["splits"].items():
        tcfg = cfg.for_task(name)
        sub_split = splits.get(cfg.submission_split) or list(splits.values())[-1]
        for method in tcfg.methods:
            for split in splits.values():
                future = (lambda s=split: tfidf.remote(s)) if method == "tfidf" else None
                predict_test = split is sub_split or split.spec.test_labelled
                records.append(
                    run_split(tcfg, split, method, p["tokenizer"], run_dir, log, future, predict_test)
                )
                write_results(run_dir, records)
            path = write_submission(run_dir, sub_split, method)
            if path:
                submissions.append(path)
    summary = write_results(run_dir, records)
    log(f"[finetune] results: {storage.join(run_dir, 'results.md')}")
    log(results_markdown(summary, records))
    return {"run_dir": run_dir, "records": records, "summary": summary, "submissions": submissions}


def main(cfg: FinetuneConfig) -> int:
    """Front-end entry point shared by jobs/finetune.py and jobs/evaluate.py: exit 2 on a run that cannot start."""
    import sys

    try:
        run(cfg)
    except FinetuneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
