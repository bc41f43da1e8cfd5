"""Fine-tuning and evaluation: every task x method x split of a run, one results table.

Each neural run (a method of :data:`fs_ray.objectives.METHODS` that is ``neural``) is its own
Ray Train ``TorchTrainer`` running the same worker loop as pretraining
(:func:`fs_ray.training.loop.train_loop`, with :class:`FinetuneWork`): the encoded training rows
stream to the workers through Ray Data, dev is evaluated on every worker's share every
``checkpoint.every_n_epochs`` and checkpointed, so a killed worker or driver resumes at the last
evaluated epoch; the final checkpoint is exported as pretraining's is. The TF-IDF floor runs as a
Ray task in its turn (all at once they would starve the trainers).

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
import functools
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
from fs_ray.assets import absolute
from fs_ray.config import write_resolved
from fs_ray.data.encoding import Encoder, gold_of, score_labels
from fs_ray.data.tasks import GENERATIVE_SHAPES, TaskDataError, TaskSpec, TaskSplit, load_split, task_spec
from fs_ray.objectives import METHODS, get_method
from fs_ray.run_configs import FinetuneConfig
from fs_ray.training import checkpoint as layout

NOT_INPUTS = ("row", "uid", "source_chars")  # row bookkeeping and decoding aids, never model inputs
# a rank's training shard up to this many rows is held in the worker and reshuffled there each
# epoch (FinetuneWork.batches); larger ones stream from Ray Data every epoch
CACHE_MAX_ROWS = 1_000_000


class FinetuneError(RuntimeError):
    """A run that cannot start; the message names the field or file to fix."""


def task_specs(cfg: FinetuneConfig) -> dict[str, TaskSpec]:
    custom = {k: TaskSpec.model_validate(v) for k, v in cfg.task_specs.items()}
    try:
        return {name: task_spec(name, custom) for name in cfg.task.names}
    except TaskDataError as err:
        raise FinetuneError(f"task.names: {err}") from None


def splits_of(cfg: FinetuneConfig, spec: TaskSpec) -> list[str]:
    return list(cfg.task.splits or spec.splits)


def load_tokenizer_for(cfg: FinetuneConfig):
    from fs_ray.data.tokenization import load_tokenizer

    if cfg.model.from_pretrained:
        from fs_ray.pretrained import resolve

        return load_tokenizer(resolve(cfg.model.from_pretrained))
    return load_tokenizer(cfg.tokenizer.source, cfg.tokenizer.lowercase)


def plan(cfg: FinetuneConfig) -> dict[str, Any]:
    """Everything checked before the cluster is touched: tasks, every split's files and labels,
    methods vs. task shapes and the family, the starting model, the vocabulary, precision vs. hardware."""
    from fs_ray.families import get_family
    from fs_ray.training.engine import resolve_precision

    specs = task_specs(cfg)
    for name, spec in specs.items():
        for method in cfg.for_task(name).methods:
            problem = get_method(method).check_shape(spec.shape)
            if problem:
                raise FinetuneError(f"methods: {method} on task {name} ({spec.shape}): {problem}")
    folder = check_pretrained(cfg, specs) if cfg.model.from_pretrained else None
    family = get_family(cfg.model.family)
    unsupported = [m for m in cfg.methods if m not in family.methods]
    if unsupported:
        raise FinetuneError(
            f"methods: {family.name} is not fine-tuned with {', '.join(unsupported)} "
            f"(its methods: {', '.join(family.methods) or 'none'})"
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
        # zero-shot and evaluation-only runs read no training file (labels come from dev)
        need_train = any(
            METHODS[m].trains and (tcfg.optim.epochs > 0 or not METHODS[m].neural) for m in tcfg.methods
        )
        for split in splits_of(tcfg, spec):
            try:
                splits[name][split] = load_split(
                    name, spec, tcfg.task.data_root, split, tcfg.task.max_bad_fraction, need_train=need_train
                )
            except (TaskDataError, OSError) as err:
                raise FinetuneError(f"task {name}, split {split}: {err}") from None
    enc = Encoder(tokenizer, cfg.task.max_len, cfg.task.truncation)
    if any(METHODS[m].neural and METHODS[m].needs_cls_sep for m in cfg.methods) and None in (
        enc.cls,
        enc.sep,
    ):
        raise FinetuneError(
            "tokenizer: fine-tuning with "
            + ", ".join(m for m in cfg.methods if METHODS[m].neural and METHODS[m].needs_cls_sep)
            + " needs a BERT-style vocabulary with [CLS] and [SEP]"
        )
    notes = fit_released_heads(cfg, folder, splits) if folder is not None else []
    return {
        "specs": specs,
        "splits": splits,
        "tokenizer": tokenizer,
        "run_dir": cfg.run.run_dir(),
        "notes": notes,
    }


def check_pretrained(cfg: FinetuneConfig, specs: dict[str, TaskSpec]):
    """Fine-tuning a released (or exported) folder: its family (set on ``cfg``), each method's model
    class for each task's shape, and its own tokenizer must fit. Returns the folder."""
    from fs_ray import pretrained

    try:
        folder = pretrained.ModelFolder.open(cfg.model.from_pretrained)
        family = pretrained.effective_family(cfg.model, folder)
    except pretrained.PretrainedError as err:
        raise FinetuneError(f"model.from_pretrained: {err}") from None
    cfg.model.family = family.name
    for name, spec in specs.items():
        for method in cfg.for_task(name).methods:
            m = get_method(method)
            if not m.neural or method not in family.methods:
                continue
            problem = pretrained.check_auto_class(
                folder, m.auto_class(spec.shape), f"method {method} on task {name}"
            )
            if problem:
                raise FinetuneError(f"model.from_pretrained: {problem}")
    positions = folder.config.get("max_position_embeddings") or folder.config.get("n_positions")
    if positions:
        for name, spec in specs.items():
            tcfg = cfg.for_task(name)
            longest = max(tcfg.task.max_len, spec.max_target_len if spec.shape in GENERATIVE_SHAPES else 0)
            if longest > positions:
                what = "task.max_len" if longest == tcfg.task.max_len else f"task {name}'s max_target_len"
                raise FinetuneError(
                    f"{what} {longest} is longer than the {positions} positions {folder.path} was built with "
                    f"(max_position_embeddings / n_positions in its config.json); lower it to {positions} or less"
                )
    if not folder.has_tokenizer:
        raise FinetuneError(
            f"model.from_pretrained: {folder.path} has no tokenizer files (tokenizer.json, vocab.txt, "
            "vocab.json + merges.txt or spiece.model); copy the ones it was trained with into it"
        )
    return folder


def fit_released_heads(cfg: FinetuneConfig, folder, splits: dict[str, dict[str, TaskSplit]]) -> list[str]:
    """A released classifier's head is kept only for tasks whose labels it has (in its order);
    otherwise :class:`FinetuneError`, unless ``model.reinit_head``. Returns notes for the log."""
    import dataclasses

    from fs_ray import pretrained

    notes = []
    for name, by_split in splits.items():
        methods = [get_method(m) for m in cfg.for_task(name).methods]
        if not any(
            m.neural and "Classification" in m.auto_class(s.spec.shape)
            for m in methods
            for s in by_split.values()
        ):
            continue
        for key, split in by_split.items():
            error, note, order = pretrained.check_head(folder, split.labels, cfg.model.reinit_head, name)
            if error:
                raise FinetuneError(f"model.from_pretrained: {error}")
            if note and note not in notes:
                notes.append(note)
            by_split[key] = dataclasses.replace(split, labels=order)
    if folder.kind not in ("mlm",) and any(get_method(m).scores_options for m in cfg.methods):
        notes.append(
            f"{folder.path} is a {folder.kind} without a masked-LM head: UniMC starts a new one on its encoder"
        )
    return notes


# ---------------------------------------------------------------------------------------------
# worker side
# ---------------------------------------------------------------------------------------------
def quiet_ray_data() -> None:
    """Ray Data's per-dataset progress bars drown the training log for many small datasets."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def epoch_batches(rows: dict, size: int, seed: int, start: int):
    """Collated micro-batches of ``rows`` (columns) from micro-batch ``start`` of an endless
    stream of epochs, each a permutation seeded by ``seed`` and the epoch number: a run resumed
    after ``start`` micro-batches continues exactly where the uninterrupted one would be."""
    import numpy as np

    from fs_ray.data.encoding import collate_rows

    n = len(rows["uid"])
    epoch, skip = divmod(start, max(math.ceil(n / size), 1))
    while True:
        order = np.random.default_rng([seed & 0xFFFFFFFF, epoch]).permutation(n)
        for i, lo in enumerate(range(0, n, size)):
            if i >= skip:
                yield collate_rows({k: v[order[lo : lo + size]] for k, v in rows.items()})
        epoch, skip = epoch + 1, 0


class FinetuneWork:
    """What the worker loop needs for one task/method/split: the method's model and loss, the
    encoded training rows epoch after epoch (seeded shuffle), dev evaluated and checkpointed every
    ``checkpoint.every_n_epochs``, dev and test outputs gathered at the end."""

    id_key = "uid"
    log_every = 10**9  # one progress line per evaluation (the line is printed at every checkpoint)
    trace_dir = tensorboard_dir = metrics_path = None

    def __init__(self, cfg: FinetuneConfig, split: TaskSplit, method: str, info: dict[str, Any]):
        self.cfg = cfg
        self.optim, self.deepspeed, self.scaling = cfg.optim, cfg.deepspeed, cfg.scaling
        self.seed = cfg.run.seed
        self.method = get_method(method)
        self.shape, self.labels, self.metric = split.spec.shape, split.labels, split.spec.metric
        self.label = f"{split.name}/{method}/split_{split.split}"
        self.info = info  # sizes, schedule, gold labels, special ids, tokenizer, task card
        self.epochs = info["epochs"]
        self.steps_per_epoch = info["steps_per_epoch"]
        self.total_steps = info["total_steps"]
        self.final_checkpoint = info["export"]
        self.probe_keys = self.method.probe_keys
        self.history: list[dict] = []
        self.resumed_from: int | None = None
        self.dev: dict | None = None
        self._eval_rows: dict[str, tuple[dict, int]] = {}  # dev/test columns this rank scores

    def epoch_of(self, step: int) -> int:
        return math.ceil(step / self.steps_per_epoch) if self.steps_per_epoch else 0

    def setup(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        quiet_ray_data()

    @functools.cached_property
    def tokenizer(self):
        """The run's tokenizer on the worker (generation decodes ids back to text)."""
        from fs_ray.data.tokenization import tokenizer_from_json

        return tokenizer_from_json(self.info["tokenizer_json"])

    def build(self):
        from fs_ray.families import build_model

        info = self.info
        model = build_model(
            self.cfg.model,
            self.method.auto_class(self.shape),
            info["vocab_size"],
            self.cfg.task.max_len,
            info["special"],
            head_kwargs=self.method.head_kwargs(self.shape, self.labels),
        )
        return self.method.wrap(model, info["yes_id"]), model

    def resume(self, state: dict, resumed: bool) -> None:
        self.history = list(state.get("history", []))
        if resumed:
            self.resumed_from = self.epoch_of(int(state["step"]))
            if self.rank == 0:
                print(f"[finetune] {self.label}: resumed after epoch {self.resumed_from}", flush=True)

    def batches(self, start: int):
        """Micro-batches from ``start`` on: epoch after epoch of this rank's shard, each epoch in
        its own seeded order. A shard of up to :data:`CACHE_MAX_ROWS` rows is read from Ray Data
        once and reordered here every epoch: every pass over a ``streaming_split`` shard is a new
        Ray Data execution, which cost each short epoch its start-up time and grew the worker's
        memory with every pass (80 epochs of 3 steps took a worker to 22 GB). A larger shard is
        streamed anew each epoch through Ray Data's local shuffle buffer."""
        import ray.train

        shard = ray.train.get_dataset_shard("train")
        if self.info["train_rows"] > CACHE_MAX_ROWS * self.world:
            # whole data epochs of batches_per_epoch micro-batches, one after the other (an
            # optimizer step may span two when grad_accum does not divide an epoch)
            epoch, skip = divmod(start, max(self.info["batches_per_epoch"], 1))
            yield from self._streamed(shard, epoch, skip)
            return
        yield from epoch_batches(self._read_shard(shard), self.optim.micro_batch_size, self.seed, start)

    @staticmethod
    def _read_shard(shard) -> dict:
        """This rank's rows as columns, in ``uid`` order (whatever order the split delivered)."""
        import numpy as np

        parts: dict[str, list] = {}
        for b in shard.iter_batches(batch_size=4096, batch_format="numpy"):
            for k, v in b.items():
                parts.setdefault(k, []).append(v)
        rows = {k: np.concatenate(parts.pop(k)) for k in list(parts)}
        by_uid = np.argsort(rows["uid"], kind="stable")
        return {k: v[by_uid] for k, v in rows.items()}

    def _streamed(self, shard, epoch: int, skip: int):
        from fs_ray.data.encoding import collate_rows

        while True:
            for i, batch in enumerate(
                shard.iter_torch_batches(
                    batch_size=self.optim.micro_batch_size,
                    collate_fn=collate_rows,
                    local_shuffle_buffer_size=min(max(self.info["train_rows"], 1), CACHE_MAX_ROWS),
                    local_shuffle_seed=self.seed * 1000 + epoch,
                )
            ):
                if i >= skip:
                    yield batch
            epoch, skip = epoch + 1, 0

    def inputs(self, batch, gen):
        return {k: v for k, v in batch.items() if k not in NOT_INPUTS}

    def checkpoint_due(self, step: int) -> bool:
        if step == self.total_steps:
            return True
        return (
            step % self.steps_per_epoch == 0
            and (step // self.steps_per_epoch) % self.cfg.checkpoint.every_n_epochs == 0
        )

    def evaluate(self, engine, step: int, train_loss: float) -> dict:
        self.dev = self._outputs(engine, "dev")
        preds, _ = self.method.decode(
            self.shape,
            self.labels,
            len(self.info["dev_gold"]),
            self.dev,
            self.info["dev_row_of"],
            self.info["dev_lengths"],
        )
        metrics = score_labels(self.metric, self.info["dev_gold"], preds)
        record = {
            "epoch": self.epoch_of(step),
            "step": step,
            "train_loss": train_loss,
            **{f"dev_{k}": v for k, v in metrics.items()},
        }
        self.history.append(record)
        if self.rank == 0:
            print(
                f"[finetune] {self.label}: epoch {record['epoch']}/{self.epochs}  loss {train_loss:.4f}  "
                + "  ".join(f"dev {k} {v:.4f}" for k, v in metrics.items()),
                flush=True,
            )
        return record

    def report(self, step: int) -> dict:
        return {"epoch": self.epoch_of(step)}

    def state(self) -> dict:
        return {"history": self.history}

    def checkpoint_meta(self) -> dict:
        return {
            "auto_class": self.method.auto_class(self.shape),
            "method": self.method.name,
            "family": self.cfg.model.family,
            "special_ids": self.info["special"],
        }

    def checkpoint_files(self) -> dict[str, str | bytes]:
        return {
            layout.TOKENIZER_FILE: self.info["tokenizer_json"],
            layout.TASK_FILE: json.dumps(self.info["task_card"], ensure_ascii=False, indent=2),
            **{
                f"{layout.ORIGINAL_TOKENIZER_DIR}/{k}": v for k, v in self.info["tokenizer_originals"].items()
            },
        }

    def finish(self, engine, rank: int, world: int) -> dict | None:
        import resource

        import torch
        import torch.distributed as dist

        dev = self.dev if self.dev is not None else self._outputs(engine, "dev")
        test = self._outputs(engine, "test")
        # the largest resident memory any worker reached (Linux counts ru_maxrss in KiB)
        peak = torch.tensor(
            [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0], dtype=torch.float64, device=engine.device
        )  # on the engine's device: NCCL reduces only GPU tensors
        if world > 1:
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        if rank != 0:
            return None
        return {
            "dev": dev,
            "test": test,
            "history": self.history,
            "epochs_done": self.epoch_of(self.total_steps),
            "resumed_from": self.resumed_from,
            "peak_worker_rss_mb": round(float(peak), 1),
        }

    def _outputs(self, engine, name: str) -> dict[int, Any]:
        """Every worker scores the rows ``uid % world == rank``, in the same number of forward passes
        (ZeRO-3 gathers parameters collectively), then all outputs are gathered on every worker."""
        import numpy as np
        import ray.train
        import torch
        import torch.distributed as dist

        from fs_ray.data.encoding import collate_rows

        n_rows = self.info[f"{name}_rows"]
        if n_rows == 0:
            return {}
        rank, world = self.rank, self.world
        if name not in self._eval_rows:  # read once per run: each read is a Ray Data execution
            mine: dict[str, list] = {}
            fallback = None
            for b in ray.train.get_dataset_shard(name).iter_batches(batch_size=256, batch_format="numpy"):
                if fallback is None:
                    fallback = {k: v[:1] for k, v in b.items()}
                keep = b["uid"] % world == rank
                for k, v in b.items():
                    mine.setdefault(k, []).append(v[keep])
            cols = {k: np.concatenate(v) for k, v in mine.items()}
            self._eval_rows[name] = (cols, len(cols["uid"])) if len(cols["uid"]) else (fallback, 0)
        cols, n_mine = self._eval_rows[name]
        bs = self.optim.eval_batch_size
        out: list = []
        module = engine.module
        module.eval()
        with torch.no_grad():
            for i in range(math.ceil(math.ceil(n_rows / world) / bs)):
                # ranks with fewer rows repeat one so every rank runs the same forward passes
                lo = i * bs if i * bs < n_mine else 0
                batch = collate_rows({k: v[lo : lo + bs] for k, v in cols.items()})
                inputs = {k: v.to(engine.device) for k, v in batch.items() if k not in NOT_INPUTS}
                payload = self.method.predict(self, module, inputs, batch)
                if i * bs < n_mine:
                    out.extend(payload)
        module.train()
        gathered = [out]
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, out)
        return {uid: payload for part in gathered for uid, payload in part}


# ---------------------------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------------------------
def _rows(
    split: TaskSplit, examples, enc: Encoder, method: str, labelled: bool, train: bool, cfg
) -> list[dict]:
    rows = get_method(method).encode(split, examples, enc, labelled, train, cfg)
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
    """One TorchTrainer run; returns (dev predictions, dev scores, test predictions, history, seconds, extra).
    ``callbacks``: Ray Train callbacks of the run (a Tune sweep passes its report callback)."""
    import ray
    from ray.train import DataConfig

    from fs_ray.data.tokenization import special_ids, tokenizer_json
    from fs_ray.families.base import doc_end
    from fs_ray.pretrained import original_tokenizer_files, resolve
    from fs_ray.training.loop import fit

    m = get_method(method)
    enc = Encoder(tokenizer, cfg.task.max_len, cfg.task.truncation)
    train_rows = _rows(split, split.train, enc, method, True, True, cfg) if m.trains else []
    dev_rows = _rows(split, split.dev, enc, method, True, False, cfg)
    tests = split.test if predict_test else []
    test_rows = _rows(split, tests, enc, method, split.spec.test_labelled, False, cfg)
    world = cfg.scaling.num_workers
    epochs = math.ceil(cfg.optim.epochs) if m.trains else 0
    if epochs and len(train_rows) < world:
        raise FinetuneError(
            f"{split.name} split {split.split}: {len(train_rows)} training rows for {world} workers"
        )
    per_rank = len(train_rows) // world
    batches_per_epoch = math.ceil(per_rank / cfg.optim.micro_batch_size) if epochs else 0
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.optim.grad_accum) if epochs else 0
    total_steps = round(cfg.optim.epochs * steps_per_epoch) if epochs else 0
    label = f"{split.name}/{method}/split_{split.split}"
    worker_cfg = cfg.model_dump(mode="json")
    if cfg.model.from_pretrained and os.path.isdir(absolute(cfg.model.from_pretrained)):
        # a local folder by absolute path (workers run elsewhere); URIs and hub ids each worker resolves
        worker_cfg["model"]["from_pretrained"] = absolute(cfg.model.from_pretrained)
    special = special_ids(tokenizer).as_dict()
    end = doc_end(special)
    info = {
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
        "special": special,
        # generation: what ends a target, what pads, how long, how to decode
        "generation_end": end,
        "generation_pad": special["pad"] if special.get("pad") is not None else end,
        "max_target_len": split.spec.max_target_len,
        "decoding": cfg.decoding.model_dump(),
        "yes_id": enc.yes,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "batches_per_epoch": batches_per_epoch,
        "total_steps": total_steps,
        "train_rows": len(train_rows),
        "dev_rows": len(dev_rows),
        "test_rows": len(test_rows),
        "dev_gold": gold_of(split, split.dev),
        "dev_row_of": [int(r["row"]) for r in dev_rows],
        "dev_lengths": [len(ex.texts[0]) for ex in split.dev],
        "export": export,
        "tokenizer_json": tokenizer_json(tokenizer),
        "tokenizer_originals": original_tokenizer_files(
            resolve(cfg.model.from_pretrained) if cfg.model.from_pretrained else cfg.tokenizer.source
        ),
        "task_card": {
            "task": split.name,
            "method": method,
            "shape": split.spec.shape,
            "labels": split.labels,
            "verbalizer": split.verbalizer,
            "question": split.spec.question,
            "max_len": cfg.task.max_len,
            "truncation": cfg.task.truncation,
            **(
                {
                    "prompt": split.spec.prompt,
                    "max_target_len": split.spec.max_target_len,
                    "decoding": cfg.decoding.model_dump(),
                }
                if split.spec.shape in GENERATIVE_SHAPES
                else {}
            ),
            "trained_on": f"{split.spec.train_file.format(split=split.split)}",
        },
    }
    work = FinetuneWork(FinetuneConfig.model_validate(worker_cfg), split, method, info)
    datasets = {
        "train": ray.data.from_items(train_rows or [{"uid": 0}]),
        "dev": ray.data.from_items(dev_rows or [{"uid": 0}]),
        "test": ray.data.from_items(test_rows or [{"uid": 0}]),
    }
    train_dir = storage.join(cfg.run.run_dir(), "train")
    run_name = f"{cfg.run.name}-{split.name}-{method}-{split.split}"
    if cfg.overwrite and storage.exists(storage.join(train_dir, run_name)):
        storage.remove_tree(storage.join(train_dir, run_name))  # start over instead of resuming
    t = time.monotonic()
    log(
        f"[finetune] {label}: {len(split.train)} train / {len(split.dev)} dev / {len(tests)} test records, "
        f"{epochs} epoch(s) x {steps_per_epoch} steps on {world} worker(s)"
    )
    result = fit(
        work,
        name=run_name,
        storage_path=train_dir,
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
        checkpoint=cfg.checkpoint,
        callbacks=callbacks,
        log=log,
    )
    out = result.return_value
    dev_pred, dev_scores = m.decode(
        split.spec.shape, split.labels, len(split.dev), out["dev"], info["dev_row_of"], info["dev_lengths"]
    )
    test_pred, _ = m.decode(
        split.spec.shape, split.labels, len(tests), out["test"],
        [int(r["row"]) for r in test_rows], [len(ex.texts[0]) for ex in tests],
    )  # fmt: skip
    if export and result.checkpoint is not None:
        from fs_ray.training.export import export_checkpoint

        with result.checkpoint.as_directory() as d, tempfile.TemporaryDirectory() as tmp:
            _copy_tree(export_checkpoint(d, os.path.join(tmp, "export")), storage.join(out_dir, "export"))
    extra = {"peak_worker_rss_mb": out["peak_worker_rss_mb"]}
    if out["resumed_from"] is not None:
        extra["resumed_from_epoch"] = out["resumed_from"]
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
    floor_future=None,
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
    if not get_method(method).neural:
        import ray

        t = time.monotonic()
        preds = ray.get(floor_future())
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
        _jsonl(
            [
                {"id": ex.id, **({"gold": g} if split.spec.test_labelled else {}), "pred": p}
                for ex, g, p in zip(tests, gold_of(split, tests), test_pred, strict=True)
            ]
        ),
    )
    storage.write_text(metrics_path, json.dumps(record, ensure_ascii=False, indent=2))
    log(
        f"[finetune] {split.name}/{method}/split_{split.split}: dev {split.spec.metric} "
        f"{record['value']:.4f} ({record['seconds']:.0f}s)"
    )
    return record


def _floor_task(split: TaskSplit, method: str) -> dict:
    """A floor method (TF-IDF, lead) fitted and run on one split, as a CPU Ray task."""
    t = time.monotonic()
    return {**get_method(method).fit_predict(split), "seconds": time.monotonic() - t}


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
    spreads = any(s["mean"] is not None for s in summary)  # no column of blanks for tasks without splits
    lines = [
        "| task | method | metric | "
        + ("mean ± std over splits 0-4 | " if spreads else "")
        + "".join(f"{k} | " for k in extra)
        + "compute (s) |",
        "|---|---|---|" + ("---:|" if spreads else "") + "---:|" * len(extra) + "---:|",
    ]
    for s in summary:
        spread = f"{pct(s['mean'])} ± {pct(s['std'])} (n={s['splits']})" if s["mean"] is not None else ""
        cells = "".join(f"{pct(s.get(k))} | " for k in extra)
        lines.append(
            f"| {s['task']} | {s['method']} | {s['metric']} | "
            + (f"{spread} | " if spreads else "")
            + f"{cells}{s['seconds']:.0f} |"
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
        [
            "task",
            "method",
            "split",
            "metric",
            "value",
            "test_value",
            "train_examples",
            "dev_examples",
            "seconds",
        ]
    )
    for r in records:
        test = (r.get("test_metrics") or {}).get(r["metric"])
        writer.writerow(
            [
                r["task"],
                r["method"],
                r["split"],
                r["metric"],
                f"{r['value']:.6f}",
                "" if test is None else f"{test:.6f}",
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
    write_resolved(cfg, run_dir)
    if not ray.is_initialized():
        ray.init()
    try:
        storage.check_shared(run_dir)  # multi-node: every worker must reach the checkpoints
    except storage.StorageError as err:
        raise FinetuneError(str(err)) from None
    quiet_ray_data()
    n_runs = sum(len(s) * len(cfg.for_task(n).methods) for n, s in p["splits"].items())
    for note in p["notes"]:
        log(f"[finetune] note: {note}")
    log(
        f"[finetune] {len(p['specs'])} task(s) x method(s) ({', '.join(cfg.methods)}) = {n_runs} runs "
        f"from {cfg.model.from_pretrained or f'scratch ({cfg.model.family}/{cfg.model.preset})'} -> {run_dir}"
    )
    floor = ray.remote(num_cpus=1)(_floor_task)
    # One TF-IDF task at a time, when its turn comes: submitted all at once, they would hold every
    # CPU and starve the next TorchTrainer's worker group (its start times out after 60 s).
    records, submissions = [], []
    for name, splits in p["splits"].items():
        tcfg = cfg.for_task(name)
        sub_split = splits.get(cfg.submission_split) or list(splits.values())[-1]
        for method in tcfg.methods:
            for split in splits.values():
                future = None if METHODS[method].neural else (lambda s=split, m=method: floor.remote(s, m))
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
