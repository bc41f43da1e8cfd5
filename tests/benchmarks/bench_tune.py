r"""ASHA vs. running every trial to completion: the same search space, seed and trials, side by side.

    .venv/bin/python tests/benchmarks/bench_tune.py --model runs/erlangshen-small-clue/export \
        [--task eprstmt] [--data-root asset://] [--samples 8] [--splits 0 1] [--out runs/bench_tune]

Two sweeps of ``tune/fewclue.py``'s code path on one private local Ray cluster, one after the
other: random search over lr / epochs / batch size / warmup / dropout with the same seed (so
both draw the same trial configs), every trial fine-tuning the same splits. One has ASHA on
(grace 4 epochs and reduction factor 2 unless ``--grace`` / ``--reduction-factor`` say
otherwise), the other runs every trial to the end. Printed: each
sweep's best dev mean over splits, the optimizer steps and epochs all its trials spent, its wall
time, and the ratios. Target: ASHA within 1 point of the exhaustive best with <= 50% of its steps.
Sweeps already in ``--out`` are resumed or reused (``--fresh`` starts over), so an interrupted
benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GRACE, REDUCTION_FACTOR = 4, 2  # ASHA rungs of the plain "asha" sweep (and the exhaustive config)
sys.path.insert(0, str(REPO))


def sweep_config(args, name: str, asha: bool):
    from fs_ray.config import validate
    from fs_ray.run_configs import TuneConfig

    data = {
        "kind": "tune",
        "run": {"name": name, "storage_path": str(Path(args.out).resolve()), "seed": args.seed},
        "tasks": [args.task],
        "splits": args.splits,
        "base": {
            "model": {"family": "erlangshen", "preset": "small", "from_pretrained": args.model},
            "task": {"data_root": args.data_root, "max_len": 128},
            "methods": ["head"],
            "optim": {"lr": 2e-4, "epochs": 8, "micro_batch_size": 8},
            "checkpoint": {"every_n_epochs": 2},
            "deepspeed": {"zero_stage": 1},
            "scaling": {"num_workers": args.workers, "cpus_per_worker": 1},
        },
        "search_space": {
            "optim.lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
            "optim.epochs": {"type": "choice", "values": [8, 16]},
            "optim.micro_batch_size": {"type": "choice", "values": [4, 8]},
            "optim.warmup_steps": {"type": "randint", "low": 0, "high": 10},
            "model.overrides.hidden_dropout_prob": {"type": "uniform", "low": 0.0, "high": 0.2},
        },
        "search_alg": "random",
        "num_samples": args.samples,
        # rungs only matter with ASHA on; the exhaustive sweep keeps one config so every setting reuses it
        "asha": {"enabled": True, "grace_period": args.grace, "reduction_factor": args.reduction_factor}
        if asha
        else {"enabled": False, "grace_period": GRACE, "reduction_factor": REDUCTION_FACTOR},
        "export_best": False,
    }
    return validate(TuneConfig, data, name)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported pretrained encoder folder to fine-tune")
    p.add_argument("--task", default="eprstmt")
    p.add_argument("--data-root", default="asset://", help="folder holding fewclue/<task> (asset://: shipped eprstmt)")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--splits", nargs="+", default=["0", "1"])
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers per trial")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the private Ray instance")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--grace", type=int, default=GRACE, help="ASHA grace period, in epochs summed over splits")
    p.add_argument("--reduction-factor", type=int, default=REDUCTION_FACTOR, help="ASHA keeps 1/N of the trials at each rung")
    p.add_argument("--out", default="runs/bench_tune")
    p.add_argument("--fresh", action="store_true", help="delete --out first (default: resume / reuse its sweeps)")
    args = p.parse_args()

    import ray

    from fs_ray.tuning import sweep

    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    # Run it with no other Ray instance on the machine: Ray Train's PlacementGroupCleaner, which frees
    # the worker CPUs of a trial ASHA stopped, looks its cluster up by address and fails with "Found
    # multiple active Ray instances" otherwise; the next trials then time out waiting for CPUs.
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=True, configure_logging=False)
    results = {}
    try:
        # the ASHA sweep is named by its rungs, so several settings reuse one exhaustive sweep in --out
        rungs = (args.grace, args.reduction_factor)
        asha_name = "asha" if rungs == (GRACE, REDUCTION_FACTOR) else "asha-g{}-rf{}".format(*rungs)
        for name, asha in (("exhaustive", False), (asha_name, True)):
            t = time.monotonic()
            out = sweep.run(sweep_config(args, name, asha), log=print)
            (row,) = out["board"]
            results[name] = {**row, "wall": time.monotonic() - t}
    finally:
        ray.shutdown()

    full, asha = results["exhaustive"], results[asha_name]
    print()
    print(f"task {args.task}, splits {args.splits}, {args.samples} trials, same seed and configs in both sweeps; "
          f"ASHA grace {args.grace} epochs, reduction factor {args.reduction_factor}")  # fmt: skip
    print(f"{'sweep':<12}{'best dev mean':>15}{'trials (done/stopped)':>24}{'epochs':>8}{'steps':>8}"
          f"{'trial s':>10}{'wall s':>8}")  # fmt: skip
    for name, r in results.items():
        print(
            f"{name:<12}{100 * r['dev_mean']:>14.2f}%{r['trials']:>12} ({r['completed']}/{r['stopped']}){'':>5}"
            f"{r['epochs']:>8}{r['steps']:>8}{r['seconds']:>10.0f}{r['wall']:>8.0f}"
        )
    print("(trial s: the trials' own time summed; wall s: this invocation, short for a sweep resumed from --out)")
    gap = 100 * (full["dev_mean"] - asha["dev_mean"])
    ratio = asha["steps"] / max(1, full["steps"])
    print(f"ASHA best - exhaustive best: {-gap:+.2f} points (target: within 1.00)")
    print(
        f"ASHA steps / exhaustive steps: {ratio:.2f} (target: <= 0.50); "
        f"trial-time ratio {asha['seconds'] / max(1.0, full['seconds']):.2f}"
    )
    print(f"ASHA best: {asha['best_config']}\nexhaustive best: {full['best_config']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
