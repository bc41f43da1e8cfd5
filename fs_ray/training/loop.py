"""The one worker loop of pretraining and fine-tuning, and the one ``TorchTrainer`` set-up.

A run hands :func:`fit` a *work* object (:class:`~fs_ray.training.pretrain.PretrainWork` or
:class:`~fs_ray.training.finetune.FinetuneWork`): it says how to build the model, where the
batches come from, how a batch becomes the objective's inputs, when to checkpoint and what to
evaluate. Everything else is written once here: seeding, the DeepSpeed engine, resume from
``ray.train.get_checkpoint()``, gradient accumulation, progress lines (loss, lr, tokens/s, ETA)
with ``metrics.jsonl`` and TensorBoard, checkpoints through ``ray.train.report`` (every rank
saves its DeepSpeed shards, rank 0 the config, tokenizer and probe), and the ZeRO-3 gather the
export probe needs.

Resume is exact: a checkpoint carries the optimizer step; the work reopens its batches at
``step * grad_accum`` micro-batches, so a restarted worker group trains on exactly the batches
the lost one would have.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Any

import torch

from fs_ray.training import checkpoint as layout
from fs_ray.training.engine import make_engine


def probe_logits(model, probe: dict[str, torch.Tensor], zero_stage: int) -> torch.Tensor:
    """The model's logits on a fixed input (collective under ZeRO-3: all ranks call). ZeRO-3's own
    hooks gather each layer's partitions as it runs, as in training; gathering the whole model at
    once would hold a full copy on every rank (5 GiB of fp32 for a 1.3B model)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(**probe).logits.float().cpu()
    model.train(was_training)
    return logits


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (no space, no permission), or none that a resume needs is
    complete. The message names the path and what is wrong."""


def save_checkpoint(
    engine, model, work, rank: int, step: int, state: dict, metrics: dict, probe=None, name: str | None = None
) -> None:
    """Every rank saves its DeepSpeed shards; rank 0 adds what export needs; every rank lists what
    it wrote; one report registers it (Ray Train registers a checkpoint once every rank's upload
    has finished)."""
    import ray.train

    world = ray.train.get_context().get_world_size()
    name = name or layout.dir_name(step)

    tmp = tempfile.mkdtemp(prefix="fs_ray_ckpt_")
    try:
        client = {**state, "step": step}
        engine.save_checkpoint(tmp, tag=layout.DS_TAG, client_state=client)
        torch.save(layout.rng_state(), os.path.join(tmp, layout.RNG_FILE.format(rank=rank)))
        if probe is not None:  # export recomputes these logits from the saved weights to verify itself
            logits = probe_logits(model, probe, work.deepspeed.zero_stage)
            if rank == 0:
                torch.save({"inputs": probe, "logits": logits}, os.path.join(tmp, layout.PROBE_FILE))
        if rank == 0:
            meta = {**client, **work.checkpoint_meta(), "zero_stage": work.deepspeed.zero_stage, "world_size": world}
            meta.pop("history", None)
            with open(os.path.join(tmp, layout.STATE_FILE), "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2, ensure_ascii=False)
            model.config.to_json_file(os.path.join(tmp, layout.HF_CONFIG_FILE))
            for file_name, content in work.checkpoint_files().items():
                path = os.path.join(tmp, file_name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if isinstance(content, bytes):
                    with open(path, "wb") as f:
                        f.write(content)
                else:
                    with open(path, "w", encoding="utf-8") as f:
                        f.write(content)
        layout.write_file_list(tmp, rank, world, step)
        try:
            ray.train.report(
                {"step": step, **metrics},
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=name,
            )
        except OSError as err:  # the upload into the run folder: a full disk, a lost mount, ...
            raise CheckpointError(_write_failure(err, step, _destination(name), tmp, work)) from None
    except OSError as err:  # the local staging folder
        raise CheckpointError(_write_failure(err, step, name, tmp, work, staging=True)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _destination(name: str) -> str:
    """Where Ray Train uploads checkpoint ``name`` (the name alone if Ray will not say)."""
    import ray.train

    try:
        return str(ray.train.get_context().get_storage().build_checkpoint_path_from_name(name))
    except Exception:  # only the message depends on it
        return name


def _write_failure(err: OSError, step: int, name: str, tmp: str, work, staging: bool = False) -> str:
    """What a failed checkpoint write says: where, why, how much it needed and how much was free."""
    import errno

    where = getattr(err, "filename", None) or (tmp if staging else name)
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(tmp) for f in fs) if os.path.isdir(tmp) else 0
    free = ""
    try:
        probe = where if os.path.exists(where) else os.path.dirname(where) or "."
        free = f", {shutil.disk_usage(probe).free / 2**20:,.1f} MiB free there"
    except OSError:
        pass
    reason = "no space left on device" if err.errno == errno.ENOSPC else (err.strerror or str(err))
    return (
        f"[{work.label}] checkpoint at step {step} ({name}) could not be written: {reason}: {where} "
        f"(this rank's part is {size / 2**20:,.1f} MiB{free}). The previous checkpoint is kept; "
        "free space (or set run.storage_path elsewhere) and rerun the same command to resume from it."
    )


def resume_checkpoint(checkpoint, label: str, rank: int):
    """(the checkpoint to resume from, folder names the run already has): Ray Train's latest, or,
    when that one is incomplete, the newest complete one before it. Every rank reaches the same
    answer from the same files; rank 0 says which checkpoints were skipped and why."""
    import posixpath

    import ray.train

    fs = checkpoint.filesystem
    parent, name = posixpath.split(checkpoint.path.rstrip("/"))
    taken = layout.taken_names(parent, fs)
    found, skipped = layout.newest_complete(parent, at_or_before=name, fs=fs)
    if skipped and rank == 0:
        print(
            f"[{label}] not resuming from incomplete checkpoint(s):\n{layout.describe(skipped)}\n"
            f"[{label}] resuming from {found or 'nothing'} instead",
            flush=True,
        )
    if found is None:
        raise CheckpointError(
            f"[{label}] no complete checkpoint to resume from in {parent}:\n{layout.describe(skipped)}"
        )
    if found != name:
        checkpoint = ray.train.Checkpoint(path=posixpath.join(parent, found), filesystem=fs)
    return checkpoint, taken


def to_device(inputs: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """The micro-batch on the engine's device; to a GPU through pinned host memory, so the copy
    runs asynchronously instead of through a pageable staging buffer."""
    if torch.device(device).type != "cuda":
        return {k: v.to(device) for k, v in inputs.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in inputs.items()}


class Progress:
    """Rank 0's progress lines, ``metrics.jsonl`` and TensorBoard scalars; the loss is averaged
    over every rank and every micro-batch since the last line."""

    def __init__(self, work, rank: int, world: int, first_step: int):
        self.work, self.rank, self.world = work, rank, world
        self.first_step = first_step
        self.t_start = self.t_last = time.monotonic()
        # the loss summed in place on its own device since the last line: no host sync per step,
        # and no per-step tensor kept alive (a list of the detached losses, never emptied when a
        # run logs only at its end, grew a fine-tuning worker by one logits-sized block per step:
        # each 4-byte survivor pinned the freed activations of its step in the allocator's heap)
        self.loss_sum: torch.Tensor | None = None
        self.loss_n = 0
        self.tokens = 0
        self.loss = float("nan")
        # parts of the loss the objective reports (Zhouwenwang's mlm_loss / lm_loss): sum and
        # count per name since the last line, NaN parts (no row of that kind) not counted
        self.part_names: tuple[str, ...] = tuple(getattr(work, "loss_parts", ()))
        self.part_sums = torch.zeros(2 * len(self.part_names), dtype=torch.float64)
        self.parts: dict[str, float] = {}
        self.writer = None
        if rank == 0 and work.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(work.tensorboard_dir)

    def add(self, loss: torch.Tensor, tokens: int, parts: dict[str, torch.Tensor] | None = None) -> None:
        if self.loss_sum is None:
            self.loss_sum = torch.zeros((), dtype=torch.float64, device=loss.device)
        elif self.loss_sum.device != loss.device:
            self.loss_sum = self.loss_sum.to(loss.device)
        self.loss_sum.add_(loss.detach())
        self.loss_n += 1
        self.tokens += tokens
        for i, name in enumerate(self.part_names):  # on the loss's device: no host sync per step
            value = (parts or {}).get(name)
            if value is None:
                continue
            if self.part_sums.device != value.device:
                self.part_sums = self.part_sums.to(value.device)
            seen = ~torch.isnan(value)
            self.part_sums[2 * i] += torch.where(seen, value.double(), 0.0)
            self.part_sums[2 * i + 1] += seen.double()

    def line(self, step: int, lr: float) -> float:
        """Collective (all ranks call): the mean loss since the last line, printed by rank 0."""
        if self.loss_n:
            mean = (self.loss_sum / self.loss_n).float()
        else:
            device = self.loss_sum.device if self.loss_sum is not None else "cpu"
            mean = torch.tensor(float("nan"), device=device)
        if self.world > 1:
            torch.distributed.all_reduce(mean)
            mean /= self.world
        self.loss = float(mean)
        if self.part_names:
            sums = self.part_sums.to(mean.device)
            if self.world > 1:
                torch.distributed.all_reduce(sums)
            self.parts = {
                name: float(sums[2 * i] / sums[2 * i + 1]) if sums[2 * i + 1] else float("nan")
                for i, name in enumerate(self.part_names)
            }
            self.part_sums.zero_()
        now = time.monotonic()
        tokens_per_s = self.tokens * self.world / max(now - self.t_last, 1e-9)
        total = self.work.total_steps
        eta = (now - self.t_start) / max(step - self.first_step, 1) * (total - step)
        if self.rank == 0:
            parts = "".join(f"  {k} {v:.4f}" for k, v in self.parts.items())
            print(
                f"[{self.work.label}] step {step}/{total}  loss {self.loss:.4f}{parts}  lr {lr:.2e}  "
                f"tokens/s {tokens_per_s:,.0f}  ETA {eta:.0f}s",
                flush=True,
            )
            parts_json = {k: (v if v == v else None) for k, v in self.parts.items()}  # NaN is not JSON: null
            record = {"step": step, "loss": self.loss, **parts_json, "lr": lr, "tokens_per_s": round(tokens_per_s, 1)}
            if self.work.metrics_path:
                with open(self.work.metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            if self.writer:
                for key in ("loss", *self.parts, "lr", "tokens_per_s"):
                    if record[key] is not None:
                        self.writer.add_scalar(f"train/{key}", record[key], step)
        if self.loss_sum is not None:
            self.loss_sum.zero_()
        self.loss_n, self.tokens, self.t_last = 0, 0, now
        return self.loss

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def train_loop(config: dict[str, Any]) -> Any:
    """Ray Train worker function (one per worker): build, wrap in DeepSpeed, resume, stream, step,
    evaluate and checkpoint as the work says, then return what the work's ``finish`` gives."""
    import ray.train

    work = config["work"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    print(
        f"[{work.label}] rank {rank}/{world} on node {ray.get_runtime_context().get_node_id()[:12]} "
        f"(pid {os.getpid()})",
        flush=True,
    )
    on_gpu = work.scaling.use_gpu and torch.cuda.is_available()
    torch.manual_seed(work.seed)  # identical initial weights on every rank
    work.setup(rank, world)
    module, model = work.build()
    if work.deepspeed.activation_checkpointing:
        model.gradient_checkpointing_enable()
    engine = make_engine(module, work.optim, work.deepspeed, world, on_gpu, max(1, work.total_steps))

    step, state = 0, {}
    checkpoint, names = ray.train.get_checkpoint(), layout.Names()
    if checkpoint:
        checkpoint, taken = resume_checkpoint(checkpoint, work.label, rank)
        names = layout.Names(taken)
        with checkpoint.as_directory() as d:
            _, state = engine.load_checkpoint(d, tag=layout.DS_TAG)
            rng = os.path.join(d, layout.RNG_FILE.format(rank=rank))
            if os.path.exists(rng):  # a different world size has no state for this rank: start fresh
                layout.set_rng_state(torch.load(rng, weights_only=False))
        step = int(state["step"])
        if rank == 0:
            print(f"[{work.label}] resumed from step {step} ({checkpoint.path})", flush=True)
    work.resume(state, resumed=checkpoint is not None)

    accum = work.optim.grad_accum
    total = work.total_steps
    batches = work.batches(step * accum) if step < total else iter(())
    progress = Progress(work, rank, world, step)
    trace = os.path.join(work.trace_dir, f"rank{rank}.jsonl") if work.trace_dir else None
    inputs: dict[str, torch.Tensor] = {}
    saved_at = step if checkpoint else None
    while step < total:
        ids: list[int] = []
        for micro in range(accum):
            batch = next(batches)
            gen = torch.Generator().manual_seed(hash((work.seed, step, micro, rank)) & 0x7FFFFFFF)
            inputs = to_device(work.inputs(batch, gen), engine.device)
            loss = engine(**inputs)
            engine.backward(loss)
            engine.step()  # applies the optimizer at accumulation boundaries only
            progress.add(loss.detach().float(), int(batch["attention_mask"].sum()), getattr(module, "parts", None))
            if trace:
                ids.extend(batch[work.id_key].tolist())
        if trace:  # audit trail of which rows each process trained on at each step
            with open(trace, "a") as f:
                f.write(json.dumps({"step": step, "pid": os.getpid(), "ids": ids}) + "\n")
        step += 1
        due = work.checkpoint_due(step)
        if due or step % work.log_every == 0 or step == total:
            progress.line(step, engine.get_lr()[0])
        if due:
            metrics = {"loss": progress.loss, **progress.parts, **work.report(step), **work.evaluate(engine, step, progress.loss)}
            probe = None
            if step == total:
                probe = {k: inputs[k][:2].detach() for k in work.probe_keys if k in inputs}
            save_checkpoint(engine, model, work, rank, step, work.state(), metrics, probe, names(step))
            saved_at = step
    progress.close()
    if work.final_checkpoint and saved_at != total:  # nothing trained (zero-shot) but an export is wanted
        save_checkpoint(engine, model, work, rank, total, work.state(), work.report(total), name=names(total))
    return work.finish(engine, rank, world)


def fit(
    work, *, name: str, storage_path: str, datasets: dict, dataset_config, checkpoint, callbacks=None, log=print
):
    """The run's ``TorchTrainer``: ``work.scaling`` workers, Ray Data ``datasets``, restarts and kept
    checkpoints from the ``checkpoint`` section, Ray Train ``callbacks``; returns ``fit()``'s result.
    While the workers wait for resources past ``scaling.wait_warning_s``, ``log`` hears why."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from fs_ray.training.waiting import ResourceWait

    scaling = work.scaling
    bundle = {"CPU": scaling.cpus_per_worker, **({"GPU": 1.0} if scaling.use_gpu else {}), **scaling.resources_per_worker}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"work": work},
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **scaling.resources_per_worker},
            placement_strategy=scaling.placement_strategy,
        ),
        datasets=datasets,
        dataset_config=dataset_config,
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=checkpoint.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=checkpoint.keep_last),
            callbacks=callbacks,
        ),
    )
    check_resume(storage_path, name, work.label, log)
    waiting = ResourceWait(work.label, bundle, scaling.num_workers, after_s=scaling.wait_warning_s, log=log)
    waiting.start()
    try:
        return trainer.fit()
    except Exception as err:
        cause = _checkpoint_failure(err)
        if cause is not None:  # said plainly, not under Ray's traceback of every attempt
            raise CheckpointError(str(cause)) from None
        raise
    finally:
        waiting.stop()


def check_resume(storage_path: str, name: str, label: str, log=print) -> None:
    """Before any worker starts: if the run folder's newest checkpoints are incomplete, say which
    and why and what the run resumes from; refuse (CheckpointError) when Ray Train would resume a
    run none of whose checkpoints is complete."""
    from fs_ray import storage

    run_dir = storage.join(storage_path, name)
    if not storage.is_dir(run_dir):
        return
    found, skipped = layout.newest_complete(run_dir)
    if not skipped:
        return
    registered = layout.registered(run_dir)
    if found is None and any(n in registered for n, _ in skipped):
        raise CheckpointError(
            f"[{label}] run {run_dir} has no complete checkpoint to resume from:\n{layout.describe(skipped)}\n"
            "Start it under a new run.name, or delete the run folder to start over."
        )
    log(
        f"[{label}] incomplete checkpoint(s), not resumed from:\n{layout.describe(skipped)}\n"
        f"[{label}] the run resumes from {found or 'the start'}"
    )
    for name_, _ in skipped:  # never registered (an upload cut short): nothing can use them
        if name_ not in registered:
            storage.remove_tree(storage.join(run_dir, name_))
            log(f"[{label}] removed {name_}: Ray Train never registered it")


def _checkpoint_failure(err: BaseException) -> BaseException | None:
    """The CheckpointError behind a failed ``fit()`` (Ray wraps the workers' exceptions), or None."""
    seen, todo = set(), [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, CheckpointError) or type(e).__name__ == "CheckpointError":
            return e
        todo.extend([e.__cause__, e.__context__, *getattr(e, "worker_failures", {}).values()])
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):
            todo.append(cause)
    return None
