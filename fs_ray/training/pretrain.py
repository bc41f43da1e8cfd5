"""Pretraining: check everything on the driver, stream the prepared corpus into the worker loop, export.

Everything that can be wrong with a run (config, corpus, objective vs. vocabulary, precision
vs. hardware) is checked in :func:`plan` before Ray is asked for a single worker. The worker
side is :class:`PretrainWork` run by :func:`fs_ray.training.loop.train_loop`.

Resume is exact: a checkpoint carries the optimizer step; each rank's data position is
``step * grad_accum`` batches, so a restarted worker group opens its streams there
(:func:`data_start`, read by :class:`fs_ray.data.ingest.CorpusDataConfig` at every (re)start) and
a worker skips whatever the stream start is behind the checkpoint it actually loaded.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any

from fs_ray import storage
from fs_ray.assets import absolute, resolve_path
from fs_ray.config import write_resolved
from fs_ray.data import manifest as manifest_format
from fs_ray.data.ingest import CorpusDataConfig, Position, PreparedCorpus, collate
from fs_ray.data.tokenization import tokenizer_from_json
from fs_ray.families import get_family
from fs_ray.objectives import get_objective
from fs_ray.pretrained import original_tokenizer_files
from fs_ray.run_configs import PretrainConfig
from fs_ray.training import checkpoint as layout
from fs_ray.training.engine import deepspeed_config, model_width, resolve_precision
from fs_ray.training.loop import fit


class PretrainError(RuntimeError):
    """A run that cannot start; the message names the field or file to fix."""


def plan(cfg: PretrainConfig) -> dict[str, Any]:
    """Validate the run against its corpus; return what the workers need."""
    prepared = absolute(cfg.data.prepared_dir)
    try:
        corpus = PreparedCorpus.load(prepared)
    except Exception as err:
        raise PretrainError(f"data.prepared_dir: {err}") from None
    notes: list[str] = []
    folder = check_pretrained(cfg, corpus, prepared, notes) if cfg.model.from_pretrained else None
    objective = get_objective(cfg.model.objective_name)
    problem = objective.check(corpus.special_ids)
    if not problem:
        try:  # what the objective builds from the corpus's tokenizer (Bigan's confusion ids, prompt)
            tokenizer_json = storage.read_text(storage.join(prepared, manifest_format.TOKENIZER_FILE))
            ctx = objective.context(tokenizer_from_json(tokenizer_json))
            seq_len = int(corpus.manifest["seq_len"])
            if seq_len < objective.min_seq_len(ctx):
                problem = f"rows of {seq_len} tokens are too short (it needs {objective.min_seq_len(ctx)} or more)"
        except ValueError as err:
            problem = str(err)
    if problem:
        raise PretrainError(
            f"model.objective={objective.name} ({cfg.model.family}) cannot train on {prepared}: {problem}"
        )
    try:
        resolve_precision(cfg.deepspeed.precision, cfg.scaling.use_gpu)
    except ValueError as err:
        raise PretrainError(str(err)) from None
    per_rank = corpus.rows_per_rank(cfg.optim.micro_batch_size, cfg.scaling.num_workers)
    batches_per_epoch = per_rank // cfg.optim.micro_batch_size
    needed = cfg.optim.max_steps * cfg.optim.grad_accum
    return {
        "corpus": corpus,
        "prepared_dir": prepared,
        "objective": objective,
        "epochs": math.ceil(needed / batches_per_epoch),
        "run_dir": cfg.run.run_dir(),
        "storage_path": absolute(cfg.run.storage_path),
        "notes": notes,
        "width": model_width(
            folder.config
            if folder is not None
            else get_family(cfg.model.family).config(
                cfg.model.preset,
                int(corpus.manifest["tokenizer"]["vocab_size"]),
                corpus.seq_len,
                corpus.special_ids,
                cfg.model.overrides,
            )
        ),
        # the model's own tokenizer files when continuing one, else the corpus vocabulary's
        "tokenizer_originals": original_tokenizer_files(
            folder.path if folder is not None else corpus.manifest["tokenizer"].get("source", "")
        ),
    }


def check_pretrained(cfg: PretrainConfig, corpus: PreparedCorpus, prepared: str, notes: list[str]):
    """Continuing a released model: its family (set on ``cfg``), objective and tokenizer must fit
    the corpus. Appends notes for the log; returns the (resolved, local) model folder; raises
    :class:`PretrainError` naming both sides."""
    from fs_ray import pretrained

    try:
        folder = pretrained.ModelFolder.open(cfg.model.from_pretrained)
        family = pretrained.effective_family(cfg.model, folder)
    except pretrained.PretrainedError as err:
        raise PretrainError(f"model.from_pretrained: {err}") from None
    if not storage.is_uri(cfg.model.from_pretrained) and os.path.isdir(
        resolve_path(cfg.model.from_pretrained)
    ):
        cfg.model.from_pretrained = absolute(cfg.model.from_pretrained)  # workers may run elsewhere
    if family.name != cfg.model.family:
        notes.append(f"model.family: {family.name}, from {folder.path} ({folder.model_type})")
        cfg.model.family = family.name
    if cfg.model.objective is not None and cfg.model.objective not in family.objectives:
        raise PretrainError(
            f"model.objective={cfg.model.objective} is not a {family.name} objective ({', '.join(family.objectives)})"
        )
    objective = get_objective(cfg.model.objective_name)
    problem = pretrained.check_auto_class(folder, objective.auto_class, f"objective {objective.name}")
    if problem is None:
        source = corpus.manifest["tokenizer"].get("source", "?")
        tokenizer_json = storage.read_text(storage.join(prepared, manifest_format.TOKENIZER_FILE))
        problem = pretrained.check_corpus_tokenizer(tokenizer_json, source, folder)
    if problem:
        raise PretrainError(f"model.from_pretrained: {problem}")
    return folder


# ---------------------------------------------------------------------------------------------
# the data position of a run
# ---------------------------------------------------------------------------------------------
def data_start(run_dir: str) -> Position:
    """Where this run's data streams open: the position saved with the latest checkpoint, or 0."""
    path = storage.join(run_dir, layout.POSITION_FILE)
    if not storage.exists(path):
        return Position(0)
    position = json.loads(storage.read_text(path))
    latest = position.get("checkpoint") or layout.dir_name(int(position["step"]))
    found, _ = layout.newest_complete(run_dir, at_or_before=latest)
    if found is None or found == latest or not position["step"]:
        return Position(int(position["batches"]))
    # the latest is incomplete: workers resume from the newest complete one (loop.resume_checkpoint)
    step = int(json.loads(storage.read_text(storage.join(run_dir, found, layout.STATE_FILE)))["step"])
    return Position(int(position["batches"]) // int(position["step"]) * step)


class StreamStart:
    """Picklable ``start`` callable for CorpusDataConfig (evaluated at every worker-group start)."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir

    def __call__(self) -> Position:
        return data_start(self.run_dir)


class DataPositionCallback:
    """Controller-side: record the data position of each checkpoint once Ray has registered it.

    Written from the controller (not a worker) because a worker's ``report`` returning does not
    mean the controller has registered that checkpoint: a worker killed right after it would be
    restarted from the previous one, and a position written by the worker would run ahead.
    """

    def __init__(self, run_dir: str):
        self.run_dir = run_dir

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if checkpoint is None or not metrics:
            return
        state = {
            "step": int(metrics[0]["step"]),
            "batches": int(metrics[0]["batches"]),
            "checkpoint": checkpoint.path.rstrip("/").rsplit("/", 1)[-1],
        }
        print(f"[pretrain] checkpoint {checkpoint.path} registered at step {state['step']}", flush=True)
        storage.write_text(storage.join(self.run_dir, layout.POSITION_FILE), json.dumps(state))

    def after_exception(self, run_context, worker_exceptions) -> None:
        return None


def position_callback(run_dir: str):
    """A ``ray.train.UserCallback`` instance of :class:`DataPositionCallback`."""
    from ray.train import UserCallback

    cls = type("DataPositionUserCallback", (DataPositionCallback, UserCallback), {})
    return cls(run_dir)


# ---------------------------------------------------------------------------------------------
# worker side
# ---------------------------------------------------------------------------------------------
class PretrainWork:
    """What the worker loop needs for pretraining: the family's model under the objective's loss,
    batches streamed from the prepared corpus, a checkpoint every ``checkpoint.every_n_steps``."""

    label = "pretrain"
    id_key = "sample_id"
    final_checkpoint = False  # the last step always checkpoints

    def __init__(
        self,
        cfg: PretrainConfig,
        manifest: dict,
        run_dir: str,
        tokenizer_json: str,
        trace_dir=None,
        tokenizer_originals: dict[str, bytes] | None = None,
    ):
        self.cfg = cfg
        self.optim, self.deepspeed, self.scaling = cfg.optim, cfg.deepspeed, cfg.scaling
        self.seed = cfg.run.seed
        self.special = manifest["tokenizer"]["special_ids"]
        self.vocab = manifest["tokenizer"]["vocab_size"]
        self.seq_len = manifest["seq_len"]
        self.objective = get_objective(cfg.model.objective_name)
        self.probe_keys = self.objective.probe_keys
        self.loss_parts = self.objective.loss_parts
        self.total_steps = cfg.optim.max_steps
        self.log_every = max(1, min(10, cfg.checkpoint.every_n_steps))
        self.run_dir, self.tokenizer_json, self.trace_dir = run_dir, tokenizer_json, trace_dir
        self.tokenizer_originals = tokenizer_originals or {}
        self._ctx, self._ctx_built = None, False
        self.tensorboard_dir = self.metrics_path = None

    def setup(self, rank: int, world: int) -> None:
        if rank == 0 and not storage.is_uri(self.run_dir):
            self.metrics_path = os.path.join(self.run_dir, "metrics.jsonl")
            self.tensorboard_dir = os.path.join(self.run_dir, "tensorboard")

    def build(self):
        from fs_ray.families import build_model

        model = build_model(self.cfg.model, self.objective.auto_class, self.vocab, self.seq_len, self.special)
        return self.objective.wrap(model), model

    def resume(self, state: dict, resumed: bool) -> None:
        return None

    def batches(self, start: int):
        """This rank's micro-batches from micro-batch ``start`` on."""
        import ray.train

        stream_start = data_start(self.run_dir).batches
        behind = start - stream_start
        if behind < 0:
            raise RuntimeError(f"data stream opened at batch {stream_start}, past the checkpoint's {start}")
        it = iter(
            ray.train.get_dataset_shard("train").iter_torch_batches(
                batch_size=self.optim.micro_batch_size,
                collate_fn=functools.partial(
                    collate, seq_len=self.seq_len, pad_id=self.special.get("pad") or 0
                ),
                prefetch_batches=2,
            )
        )
        for _ in range(behind):  # the stream was opened before the checkpoint actually loaded
            next(it)
        return it

    def inputs(self, batch, gen):
        if not self._ctx_built:  # once per worker process, from the corpus's own tokenizer
            self._ctx = self.objective.context(tokenizer_from_json(self.tokenizer_json))
            self._ctx_built = True
        return self.objective.inputs(
            batch, self.special, self.vocab, gen, self.cfg.model.objective_options, ctx=self._ctx
        )

    def checkpoint_due(self, step: int) -> bool:
        return step % self.cfg.checkpoint.every_n_steps == 0 or step == self.total_steps

    def evaluate(self, engine, step: int, train_loss: float) -> dict:
        return {}

    def report(self, step: int) -> dict:
        return {"batches": step * self.optim.grad_accum}

    def state(self) -> dict:
        return {}

    def checkpoint_meta(self) -> dict:
        return {
            "auto_class": self.objective.auto_class,
            "objective": self.objective.name,
            "objective_options": self.objective.settings(self.cfg.model.objective_options),
            "family": self.cfg.model.family,
            "special_ids": self.special,
        }

    def checkpoint_files(self) -> dict[str, str | bytes]:
        return {
            layout.TOKENIZER_FILE: self.tokenizer_json,
            **{f"{layout.ORIGINAL_TOKENIZER_DIR}/{k}": v for k, v in self.tokenizer_originals.items()},
        }

    def finish(self, engine, rank: int, world: int) -> None:
        return None


# ---------------------------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------------------------
def pretrain(cfg: PretrainConfig, log=print, trace_dir: str | None = None) -> dict[str, Any]:
    """Run (or resume) pretraining on the current Ray cluster; export at the end.

    ``trace_dir``: each rank appends the sample ids of every step it trains (and its pid) to
    ``rank<N>.jsonl`` there (an audit of data order across restarts).
    """
    import ray

    if get_objective(cfg.model.objective_name).pairs:  # Taiyi: image-text pairs, not a token corpus
        from fs_ray.training.contrastive import PairsError, pretrain_pairs

        try:
            return pretrain_pairs(cfg, log)
        except PairsError as err:
            raise PretrainError(str(err)) from None

    p = plan(cfg)
    corpus: PreparedCorpus = p["corpus"]
    out = p["run_dir"]
    write_resolved(cfg, out)
    storage.write_text(
        storage.join(out, "deepspeed_config.json"),
        json.dumps(
            deepspeed_config(
                cfg.optim, cfg.deepspeed, cfg.scaling.num_workers, cfg.scaling.use_gpu, p["width"]
            ),
            indent=2,
        ),
    )
    tokenizer_json = storage.read_text(storage.join(p["prepared_dir"], manifest_format.TOKENIZER_FILE))
    if not ray.is_initialized():
        ray.init()
    try:
        storage.check_shared(p["storage_path"])  # multi-node: every worker must reach the checkpoints
    except storage.StorageError as err:
        raise PretrainError(str(err)) from None
    for note in p["notes"]:
        log(f"[pretrain] note: {note}")
    start = f"from {cfg.model.from_pretrained}, " if cfg.model.from_pretrained else ""
    log(
        f"[pretrain] {cfg.model.family}/{start or cfg.model.preset + ' '}({p['objective'].name}), {cfg.scaling.num_workers} "
        f"workers, {cfg.optim.max_steps} steps x {cfg.optim.micro_batch_size} x {cfg.optim.grad_accum} accum, "
        f"ZeRO-{cfg.deepspeed.zero_stage}, corpus {corpus.num_rows:,} sequences ({p['epochs']} epoch(s)) -> {out}"
    )
    manifest = {k: corpus.manifest[k] for k in ("tokenizer", "seq_len", "pack_mode")}
    result = fit(
        PretrainWork(cfg, manifest, out, tokenizer_json, trace_dir, p["tokenizer_originals"]),
        name=cfg.run.name,
        storage_path=p["storage_path"],
        datasets={"train": corpus.dataset()},
        dataset_config=CorpusDataConfig(
            p["prepared_dir"],
            batch_size=cfg.optim.micro_batch_size,
            seed=cfg.run.seed,
            epochs=p["epochs"],
            start=StreamStart(out),
        ),
        checkpoint=cfg.checkpoint,
        callbacks=[position_callback(out)],
        log=log,
    )
    summary: dict[str, Any] = {"run_dir": out, "metrics": result.metrics, "checkpoint": None, "export": None}
    if result.checkpoint is not None:
        from fs_ray.training.export import export_checkpoint

        summary["checkpoint"] = result.checkpoint.path
        with result.checkpoint.as_directory() as ckpt:
            export_dir = os.path.join(out, "export") if not storage.is_uri(out) else os.path.abspath("export")
            summary["export"] = export_checkpoint(ckpt, export_dir)
    log(
        f"[pretrain] done: step {result.metrics.get('step')}  loss {result.metrics.get('loss', float('nan')):.4f}  "
        f"checkpoint {summary['checkpoint']}  export {summary['export']}"
    )
    return summary
