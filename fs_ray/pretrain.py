"""Driver side of pretraining: check everything, build the TorchTrainer, fit, export.

Everything that can be wrong with a run (config, corpus, objective vs. vocabulary, precision
vs. hardware) is checked here before Ray is asked for a single worker.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from fs_ray import storage
from fs_ray.assets import resolve_path
from fs_ray.config import to_yaml
from fs_ray.ingest import CorpusDataConfig, PreparedCorpus
from fs_ray.models import objective_of
from fs_ray.run_configs import PretrainConfig
from fs_ray.training import (
    FAIL_ENV,
    _StartFrom,
    deepspeed_config,
    position_callback,
    pretrain_loop,
    resolve_precision,
)


class PretrainError(RuntimeError):
    """A run that cannot start; the message names the field or file to fix."""


def _absolute(path: str) -> str:
    return path if storage.is_uri(path) else os.path.abspath(resolve_path(path))


def plan(cfg: PretrainConfig) -> dict[str, Any]:
    """Validate the run against its corpus; return what the workers need."""
    prepared = _absolute(cfg.data.prepared_dir)
    try:
        corpus = PreparedCorpus.load(prepared)
    except Exception as err:
        raise PretrainError(f"data.prepared_dir: {err}") from None
    objective = objective_of(cfg.model.family)
    special = corpus.special_ids
    if objective == "mlm" and special.get("mask") is None:
        raise PretrainError("model.family needs a [MASK] token, which the corpus vocabulary lacks")
    if objective == "span" and not special.get("num_sentinels"):
        raise PretrainError(
            "model.family=randeng (span corruption) needs sentinels: prepare the corpus with "
            "tokenizer.source=bert-chinese-sentinels"
        )
    if cfg.model.from_pretrained and not os.path.isdir(resolve_path(cfg.model.from_pretrained)):
        raise PretrainError(f"model.from_pretrained: {cfg.model.from_pretrained} is not a folder")
    try:
        resolve_precision(cfg.deepspeed.precision, cfg.scaling.use_gpu)
    except ValueError as err:
        raise PretrainError(str(err)) from None
    per_rank = corpus.rows_per_rank(cfg.optim.micro_batch_size, cfg.scaling.num_workers)
    batches_per_epoch = per_rank // cfg.optim.micro_batch_size
    needed = cfg.optim.max_steps * cfg.optim.grad_accum
    epochs = math.ceil(needed / batches_per_epoch)
    out = _absolute(cfg.run.output_dir())
    return {
        "corpus": corpus,
        "prepared_dir": prepared,
        "objective": objective,
        "epochs": epochs,
        "run_dir": out,
        "storage_path": _absolute(cfg.run.storage_path),
    }


def pretrain(cfg: PretrainConfig, log=print, trace_dir: str | None = None) -> dict[str, Any]:
    """Run (or resume) pretraining on the current Ray cluster; export at the end.

    ``trace_dir``: each rank appends the sample ids of every step it trains to
    ``rank<N>.jsonl`` there (an audit of data order across restarts).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    p = plan(cfg)
    corpus: PreparedCorpus = p["corpus"]
    out = p["run_dir"]
    storage.write_text(storage.join(out, "config.yaml"), f"# resolved {type(cfg).__name__}\n" + to_yaml(cfg))
    storage.write_text(
        storage.join(out, "deepspeed_config.json"),
        json.dumps(deepspeed_config(cfg, cfg.scaling.num_workers, cfg.scaling.use_gpu), indent=2),
    )
    tokenizer_json = storage.read_text(storage.join(p["prepared_dir"], "tokenizer.json"))
    if not ray.is_initialized():
        ray.init()
    try:
        storage.check_shared(p["storage_path"])  # multi-node: every worker must reach the checkpoints
    except storage.StorageError as err:
        raise PretrainError(str(err)) from None
    log(
        f"[pretrain] {cfg.model.family}/{cfg.model.preset} ({p['objective']}), {cfg.scaling.num_workers} workers, "
        f"{cfg.optim.max_steps} steps x {cfg.optim.micro_batch_size} x {cfg.optim.grad_accum} accum, "
        f"ZeRO-{cfg.deepspeed.zero_stage}, corpus {corpus.num_rows:,} sequences ({p['epochs']} epoch(s)) -> {out}"
    )
    trainer = TorchTrainer(
        pretrain_loop,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "manifest": {k: corpus.manifest[k] for k in ("tokenizer", "seq_len", "pack_mode")},
            "objective": p["objective"],
            "run_dir": out,
            "tokenizer_json": tokenizer_json,
            "tensorboard_dir": None if storage.is_uri(out) else os.path.join(out, "tensorboard"),
            "log_every": max(1, min(10, cfg.checkpoint.every_n_steps)),
            "trace_dir": trace_dir,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker, **cfg.scaling.resources_per_worker},
            placement_strategy=cfg.scaling.placement_strategy,
        ),
        datasets={"train": corpus.dataset()},
        dataset_config=CorpusDataConfig(
            p["prepared_dir"],
            batch_size=cfg.optim.micro_batch_size,
            seed=cfg.run.seed,
            epochs=p["epochs"],
            start=_StartFrom(out),
        ),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=p["storage_path"],
            failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep_last),
            callbacks=[position_callback(out)],
            # the fault-injection hook set on the driver (or the job) reaches the workers
            worker_runtime_env={"env_vars": {FAIL_ENV: os.environ[FAIL_ENV]}}
            if os.environ.get(FAIL_ENV)
            else None,
        ),
    )
    result = trainer.fit()
    summary: dict[str, Any] = {"run_dir": out, "metrics": result.metrics, "checkpoint": None, "export": None}
    if result.checkpoint is not None:
        from fs_ray.export import export_checkpoint

        summary["checkpoint"] = result.checkpoint.path
        with result.checkpoint.as_directory() as ckpt:
            export_dir = os.path.join(out, "export") if not storage.is_uri(out) else os.path.abspath("export")
            summary["export"] = export_checkpoint(ckpt, export_dir)
    log(
        f"[pretrain] done: step {result.metrics.get('step')}  loss {result.metrics.get('loss', float('nan')):.4f}  "
        f"checkpoint {summary['checkpoint']}  export {summary['export']}"
    )
    return summary
