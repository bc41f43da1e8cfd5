"""The worker loop shared by pretraining and fine-tuning: DeepSpeed engine per Ray Train worker,
batches from the deterministic corpus stream, checkpoints through ``ray.train.report``.

Resume is exact: a checkpoint carries the optimizer step; each rank's data position is
``step * grad_accum`` batches, so a restarted worker group opens its streams there
(:func:`data_start`, read by :class:`fs_ray.ingest.CorpusDataConfig` at every (re)start) and a
worker skips whatever the stream start is behind the checkpoint it actually loaded.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from typing import Any

import torch

from fs_ray import storage
from fs_ray.ingest import Position, collate
from fs_ray.run_configs import PretrainConfig

POSITION_FILE = "data_position.json"
STATE_FILE = "fs_ray_state.json"
PROBE_FILE = "export_probe.pt"
DS_TAG = "deepspeed"
FAIL_ENV = "FS_RAY_FAIL_AT_STEP"  # test hook: "<step>:<rank>" kills that worker once (SIGKILL)
FAIL_GRACE_S = 5.0


def resolve_precision(precision: str, on_gpu: bool) -> str:
    if precision == "auto":
        return "bf16" if on_gpu else "fp32"
    if precision in ("bf16", "fp16") and not on_gpu:
        # fp16/bf16 on this CPU run ~50x slower than fp32 and fp16 has no CPU kernels for all ops
        raise ValueError(
            f"deepspeed.precision={precision} needs GPUs (scaling.use_gpu=true); use fp32 or auto on CPU"
        )
    return precision


def deepspeed_config(cfg: PretrainConfig, world_size: int, on_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed JSON, generated from the typed config (written next to the run)."""
    ds = cfg.deepspeed
    precision = resolve_precision(ds.precision, on_gpu)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False  # export gathers from the shards
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.optim.micro_batch_size,
        "gradient_accumulation_steps": cfg.optim.grad_accum,
        "train_batch_size": cfg.optim.micro_batch_size * cfg.optim.grad_accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer:
        # ZeRO-Offload steps the optimizer on the CPU with DeepSpeed's compiled CPU Adam
        config["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": cfg.optim.lr,
                "weight_decay": cfg.optim.weight_decay,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
            },
        }
    return config


def lr_lambda(cfg: PretrainConfig, total_steps: int | None = None):
    warmup, kind = cfg.optim.warmup_steps, cfg.optim.schedule
    total = total_steps or cfg.optim.max_steps

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def run_dir(cfg: PretrainConfig) -> str:
    from fs_ray.assets import resolve_path

    return resolve_path(cfg.run.output_dir())


def data_start(run_dir: str) -> Position:
    """Where this run's data streams open: the position saved with the latest checkpoint, or 0."""
    path = storage.join(run_dir, POSITION_FILE)
    if not storage.exists(path):
        return Position(0)
    return Position(int(json.loads(storage.read_text(path))["batches"]))


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
        state = {"step": int(metrics[0]["step"]), "batches": int(metrics[0]["batches"])}
        print(f"[pretrain] checkpoint {checkpoint.path} registered at step {state['step']}", flush=True)
        storage.write_text(storage.join(self.run_dir, POSITION_FILE), json.dumps(state))

    def after_exception(self, run_context, worker_exceptions) -> None:
        return None


def position_callback(run_dir: str):
    """A ``ray.train.UserCallback`` instance of :class:`DataPositionCallback`."""
    from ray.train import UserCallback

    cls = type("DataPositionUserCallback", (DataPositionCallback, UserCallback), {})
    return cls(run_dir)


class _StartFrom:
    """Picklable ``start`` callable for CorpusDataConfig (evaluated at every worker-group start)."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir

    def __call__(self) -> Position:
        return data_start(self.run_dir)


def _maybe_fail(step: int, rank: int, marker_dir: str) -> None:
    spec = os.environ.get(FAIL_ENV)
    if not spec:
        return
    at_step, at_rank = (int(x) for x in spec.split(":"))
    marker = os.path.join(marker_dir, f".failed_at_{at_step}_{at_rank}")
    if step == at_step and rank == at_rank and not os.path.exists(marker):
        open(marker, "w").close()
        # Ray Train's controller collects reports on a ~2 s poll: dying within it of a report
        # would lose that checkpoint too (correctly, but then the test could not tell which one
        # the run resumes from). FAIL_GRACE_S keeps the hook's outcome deterministic.
        time.sleep(FAIL_GRACE_S)
        print(f"[fs_ray] {FAIL_ENV}: killing rank {rank} at step {step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def _objective_inputs(
    objective: str, batch: dict[str, torch.Tensor], special: dict[str, Any], vocab: int, gen
):
    from fs_ray import objectives

    if objective == "mlm":
        never = tuple(
            i for i in (special.get("cls"), special.get("sep"), special.get("pad")) if i is not None
        )
        ids = objectives.MaskingIds(
            mask=special["mask"],
            vocab_size=vocab,
            never_mask=never,
            first_random=max(never) + 1 if never else 0,
        )
        starts = batch.get("word_starts")
        if starts is None:  # no jieba boundaries stored: every token is its own word
            starts = torch.ones_like(batch["input_ids"], dtype=torch.bool)
        inp, labels = objectives.whole_word_mask(
            batch["input_ids"], starts, batch["attention_mask"], ids, gen
        )
        return {"input_ids": inp, "attention_mask": batch["attention_mask"], "labels": labels}
    if objective == "clm":
        inp, labels = objectives.causal_lm(batch["input_ids"], batch["attention_mask"])
        return {"input_ids": inp, "attention_mask": batch["attention_mask"], "labels": labels}
    eos = special["sep"] if special.get("sep") is not None else special["eos"]
    sentinels = (
        tuple(range(special["first_sentinel"], special["first_sentinel"] + special["num_sentinels"]))
        if special.get("num_sentinels")
        else ()
    )
    drop = (special["cls"],) if special.get("cls") is not None else ()
    return objectives.span_corruption(
        batch["input_ids"],
        batch["attention_mask"],
        sentinels,
        eos_id=eos,
        pad_id=special.get("pad") or 0,
        generator=gen,
        drop_ids=drop,
    )


def probe_logits(model, probe: dict[str, torch.Tensor], zero_stage: int) -> torch.Tensor:
    """The model's logits on a fixed input, gathering ZeRO-3 partitions (collective: all ranks call)."""
    import contextlib

    gather = contextlib.nullcontext()
    if zero_stage == 3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    was_training = model.training
    model.eval()
    with gather, torch.no_grad():
        logits = model(**probe).logits.float().cpu()
    model.train(was_training)
    return logits


def _save_checkpoint(
    engine, step: int, batches: int, loss: float, rank: int, train_config: dict, model, probe=None
) -> None:
    import ray.train

    tmp = tempfile.mkdtemp(prefix="fs_ray_ckpt_")
    try:
        state = {"step": step, "batches": batches}
        engine.save_checkpoint(tmp, tag=DS_TAG, client_state=state)
        if probe is not None:  # export recomputes these logits from the saved weights to verify itself
            logits = probe_logits(model, probe, train_config["cfg"]["deepspeed"]["zero_stage"])
            if rank == 0:
                torch.save({"inputs": probe, "logits": logits}, os.path.join(tmp, PROBE_FILE))
        if rank == 0:
            meta = {
                **state,
                "objective": train_config["objective"],
                "family": train_config["cfg"]["model"]["family"],
                "special_ids": train_config["manifest"]["tokenizer"]["special_ids"],
                "zero_stage": train_config["cfg"]["deepspeed"]["zero_stage"],
            }
            with open(os.path.join(tmp, STATE_FILE), "w") as f:
                json.dump(meta, f, indent=2)
            model.config.to_json_file(os.path.join(tmp, "hf_config.json"))
            with open(os.path.join(tmp, "tokenizer.json"), "w", encoding="utf-8") as f:
                f.write(train_config["tokenizer_json"])
        ray.train.report(
            {"step": step, "batches": batches, "loss": loss},
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"checkpoint_step{step:08d}",
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def make_engine(module, cfg, world: int, on_gpu: bool, total_steps: int | None = None):
    """``module`` (whose forward returns the loss) in DeepSpeed with AdamW (decay on matrices only,
    or DeepSpeed's CPU Adam under optimizer offload) and the warmup + decay schedule.

    ``cfg`` is any run config with ``optim`` and ``deepspeed`` sections (pretrain or finetune).
    Needs ``torch.distributed`` initialised (Ray Train's TorchTrainer does it on every worker).
    """
    import deepspeed

    ds_config = deepspeed_config(cfg, world, on_gpu)
    schedule = lr_lambda(cfg, total_steps)
    if ds_config.get("optimizer"):
        optimizer = None
        scheduler = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule)  # noqa: E731
    else:
        decay = [p for p in module.parameters() if p.ndim >= 2 and p.requires_grad]
        no_decay = [p for p in module.parameters() if p.ndim < 2 and p.requires_grad]
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.optim.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.optim.lr,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    stop = threading.Event()
    if not on_gpu:  # a lock left by a killed compile would make initialize wait forever
        clear_stale_build_lock("deepspeed_shm_comm")
        threading.Thread(target=_watch_build_lock, args=("deepspeed_shm_comm", stop), daemon=True).start()
    try:
        engine, _, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, dist_init_required=False
        )
    finally:
        stop.set()
    return engine


STALE_BUILD_LOCK_S = 600.0


def _watch_build_lock(name: str, stop: threading.Event, every_s: float = 15.0) -> None:
    """While another rank's compile holds the lock, keep checking whether it went stale."""
    while not stop.wait(every_s):
        clear_stale_build_lock(name)


def clear_stale_build_lock(name: str, max_age_s: float = STALE_BUILD_LOCK_S) -> bool:
    """Remove a torch extension build lock left by a process killed mid-compile.

    DeepSpeed JIT-compiles its CPU communication op on first use; torch guards the build with a
    lock file that names no owner, so a worker killed while compiling (a lost node, a stopped
    job) leaves it behind and every later run waits on it forever. A compile takes about 90 s
    here, so a lock older than ``max_age_s`` has no builder left. Returns True if one was removed.
    """
    from torch.utils.cpp_extension import _get_build_directory

    lock = os.path.join(_get_build_directory(name, verbose=False), "lock")
    try:
        age = time.time() - os.path.getmtime(lock)
    except OSError:
        return False
    if age < max_age_s:
        return False
    try:
        os.remove(lock)
    except OSError:
        return False  # another worker removed it first
    print(f"[fs_ray] removed a stale {name} build lock ({age:.0f} s old): {lock}", flush=True)
    return True


def build_engine(
    cfg: PretrainConfig, vocab: int, seq_len: int, special: dict[str, Any], world: int, on_gpu: bool
):
    """Model + objective wrapper + AdamW (or DeepSpeed's CPU Adam under offload) + schedule, in DeepSpeed.

    Returns ``(engine, hf_model, objective)``.
    """
    from fs_ray.models import build_model, wrap

    model, objective = build_model(
        cfg.model.family,
        cfg.model.preset,
        cfg.model.from_pretrained,
        vocab,
        seq_len,
        special,
        cfg.model.overrides,
    )
    if cfg.deepspeed.activation_checkpointing:
        model.gradient_checkpointing_enable()
    engine = make_engine(wrap(model, objective), cfg, world, on_gpu)
    return engine, model, objective


def micro_step(
    engine, objective: str, batch: dict[str, torch.Tensor], special: dict[str, Any], vocab: int, gen
):
    """One micro-batch: objective transform, forward, backward, DeepSpeed step (which applies the
    optimizer only at accumulation boundaries). Returns ``(loss, model inputs)``."""
    inputs = _objective_inputs(objective, batch, special, vocab, gen)
    inputs = {k: v.to(engine.device) for k, v in inputs.items()}
    loss = engine(**inputs)
    engine.backward(loss)
    engine.step()
    return loss.detach().float(), inputs


def pretrain_loop(train_config: dict[str, Any]) -> None:
    """Ray Train worker function (one per worker): build, wrap in DeepSpeed, stream, step, checkpoint."""
    import ray.train

    cfg = PretrainConfig.model_validate(train_config["cfg"])
    manifest = train_config["manifest"]
    special = manifest["tokenizer"]["special_ids"]
    vocab = manifest["tokenizer"]["vocab_size"]
    seq_len = manifest["seq_len"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    print(f"[pretrain] rank {rank}/{world} on node {ray.get_runtime_context().get_node_id()[:12]}", flush=True)
    on_gpu = cfg.scaling.use_gpu and torch.cuda.is_available()
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank

    engine, model, objective = build_engine(cfg, vocab, seq_len, special, world, on_gpu)

    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            _, client = engine.load_checkpoint(d, tag=DS_TAG)
        step = int(client["step"])
        if rank == 0:
            print(f"[pretrain] resumed from step {step} ({checkpoint.path})", flush=True)

    accum = cfg.optim.grad_accum
    stream_start = data_start(train_config["run_dir"]).batches
    behind = step * accum - stream_start
    if behind < 0:
        raise RuntimeError(
            f"data stream opened at batch {stream_start}, past the checkpoint's {step * accum}"
        )
    batches = iter(
        ray.train.get_dataset_shard("train").iter_torch_batches(
            batch_size=cfg.optim.micro_batch_size,
            collate_fn=lambda b: collate(b, seq_len=seq_len, pad_id=special.get("pad") or 0),
            prefetch_batches=2,
        )
    )
    for _ in range(behind):  # the stream was opened before the checkpoint actually loaded
        next(batches)

    log_every = train_config.get("log_every", 10)
    trace_dir = train_config.get("trace_dir")
    metrics_path = os.path.join(tempfile.gettempdir(), f"fs_ray_metrics_{os.getpid()}.jsonl")
    if rank == 0 and not storage.is_uri(train_config["run_dir"]):
        metrics_path = os.path.join(train_config["run_dir"], "metrics.jsonl")
    writer = None
    if rank == 0 and train_config.get("tensorboard_dir"):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(train_config["tensorboard_dir"])
    t_start, tokens_since, t_last = time.monotonic(), 0, time.monotonic()
    first_step = step
    loss_value = float("nan")
    while step < cfg.optim.max_steps:
        _maybe_fail(step, rank, train_config["run_dir"])
        losses: list[torch.Tensor] = []
        step_ids: list[int] = []
        for micro in range(accum):
            batch = next(batches)
            gen = torch.Generator().manual_seed(hash((cfg.run.seed, step, micro, rank)) & 0x7FFFFFFF)
            loss, inputs = micro_step(engine, objective, batch, special, vocab, gen)
            losses.append(loss)
            tokens_since += int(batch["attention_mask"].sum())
            step_ids.extend(batch["sample_id"].tolist())
        if trace_dir:  # audit trail of which sequences each rank trained on at each step
            with open(os.path.join(trace_dir, f"rank{rank}.jsonl"), "a") as f:
                f.write(json.dumps({"step": step, "ids": step_ids}) + "\n")
        step += 1
        loss_tensor = torch.stack(losses).mean()
        if step % log_every == 0 or step == cfg.optim.max_steps or step % cfg.checkpoint.every_n_steps == 0:
            if world > 1:
                torch.distributed.all_reduce(loss_tensor)
                loss_tensor /= world
            loss_value = float(loss_tensor)
            now = time.monotonic()
            tokens_per_s = tokens_since * world / max(now - t_last, 1e-9)
            eta = (now - t_start) / max(step - first_step, 1) * (cfg.optim.max_steps - step)
            if rank == 0:
                lr = engine.get_lr()[0]
                print(
                    f"[pretrain] step {step}/{cfg.optim.max_steps}  loss {loss_value:.4f}  lr {lr:.2e}  "
                    f"tokens/s {tokens_per_s:,.0f}  ETA {eta:.0f}s",
                    flush=True,
                )
                record = {"step": step, "loss": loss_value, "lr": lr, "tokens_per_s": round(tokens_per_s, 1)}
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                if writer:
                    writer.add_scalar("train/loss", loss_value, step)
                    writer.add_scalar("train/lr", lr, step)
                    writer.add_scalar("train/tokens_per_s", tokens_per_s, step)
            tokens_since, t_last = 0, now
        if step % cfg.checkpoint.every_n_steps == 0 or step == cfg.optim.max_steps:
            probe = None
            if step == cfg.optim.max_steps:
                keys = (
                    ("input_ids", "attention_mask", "labels")
                    if objective == "span"
                    else ("input_ids", "attention_mask")
                )
                probe = {k: inputs[k][:2].detach().to(engine.device) for k in keys}
            _save_checkpoint(engine, step, step * accum, loss_value, rank, train_config, model, probe)
    if writer:
        writer.close()
