"""The DeepSpeed engine both worker loops train with: the DeepSpeed JSON generated from the typed
``optim`` and ``deepspeed`` sections, AdamW (or DeepSpeed's CPU Adam under optimizer offload), the
warmup + decay schedule, and a guard against a stale op-build lock on CPU."""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any

import torch

from fs_ray.run_configs import DeepSpeedSection, OptimSection


def resolve_precision(precision: str, on_gpu: bool) -> str:
    if precision == "auto":
        return "bf16" if on_gpu else "fp32"
    if precision in ("bf16", "fp16") and not on_gpu:
        # fp16/bf16 on this CPU run ~50x slower than fp32 and fp16 has no CPU kernels for all ops
        raise ValueError(
            f"deepspeed.precision={precision} needs GPUs (scaling.use_gpu=true); use fp32 or auto on CPU"
        )
    return precision


# ZeRO-3 keeps at most this many gathered parameters alive, and steps the optimizer in sub-groups
# of this many: DeepSpeed's defaults (1e9) keep most of a 1.3B model gathered on every rank
LIVE_PARAMETERS = 100_000_000


def model_width(config) -> int | None:
    """The hidden size of a Hugging Face config (object or dict): hidden_size, d_model or n_embd."""
    for key in ("hidden_size", "d_model", "n_embd"):
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        if value:
            return int(value)
    return None


def deepspeed_config(
    optim: OptimSection, ds: DeepSpeedSection, world_size: int, on_gpu: bool, width: int | None = None
) -> dict[str, Any]:
    """The DeepSpeed JSON, generated from the typed config (written next to the run).

    ``width`` (the model's hidden size) sizes ZeRO-3's buffers to the model the way Hugging Face's
    ``"auto"`` values do (reduce bucket hidden², prefetch 0.9·hidden², parameters under 10·hidden
    kept whole), and bounds the live gathered parameters: with DeepSpeed's defaults (5e8-element
    buckets, 1e9 live parameters) a 351M-parameter MegatronBERT took 12.7 GiB peak in one fp32
    process, 9.6 GiB with these (tests/benchmarks/bench_megatron_1p3b.py)."""
    precision = resolve_precision(ds.precision, on_gpu)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage == 3 and width:
        zero.update(
            {
                "reduce_bucket_size": width * width,
                "stage3_prefetch_bucket_size": int(0.9 * width * width),
                "stage3_param_persistence_threshold": 10 * width,
                "stage3_max_live_parameters": LIVE_PARAMETERS,
                "stage3_max_reuse_distance": LIVE_PARAMETERS,
                "sub_group_size": LIVE_PARAMETERS,
            }
        )
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False  # export gathers from the shards
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": optim.micro_batch_size,
        "gradient_accumulation_steps": optim.grad_accum,
        "train_batch_size": optim.micro_batch_size * optim.grad_accum * world_size,
        "gradient_clipping": optim.grad_clip,
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
                "lr": optim.lr,
                "weight_decay": optim.weight_decay,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
            },
        }
    return config


def lr_lambda(optim: OptimSection, total_steps: int):
    warmup, kind = optim.warmup_steps, optim.schedule
    total = total_steps

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_engine(
    module, optim: OptimSection, ds: DeepSpeedSection, world: int, on_gpu: bool, total_steps: int
):
    """``module`` (whose forward returns the loss) in DeepSpeed with AdamW (decay on matrices only,
    or DeepSpeed's CPU Adam under optimizer offload) and the warmup + decay schedule over
    ``total_steps`` optimizer steps. Needs ``torch.distributed`` initialised (Ray Train's
    TorchTrainer does it on every worker).
    """
    import deepspeed

    hf_config = next((m.config for m in module.modules() if hasattr(getattr(m, "config", None), "to_dict")), None)
    ds_config = deepspeed_config(optim, ds, world, on_gpu, model_width(hf_config) if hf_config else None)
    schedule = lr_lambda(optim, total_steps)
    if ds_config.get("optimizer"):
        optimizer = None
        scheduler = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule)  # noqa: E731
    else:
        decay = [p for p in module.parameters() if p.ndim >= 2 and p.requires_grad]
        no_decay = [p for p in module.parameters() if p.ndim < 2 and p.requires_grad]
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": optim.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=optim.lr,
            fused=on_gpu or None,  # one kernel for every parameter on a GPU; torch's default on a CPU
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


