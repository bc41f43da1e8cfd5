"""Ray Tune sweeps over fine-tuning runs: search, ASHA early stopping, resumable experiments, a leaderboard.

Ray 2.60's Train-V2 pattern: every Tune trial is a small driver function (0 CPUs) that runs the
fine-tuning of :mod:`fs_ray.training.finetune` split after split, each split its own ``TorchTrainer`` with a
stable run name. Each dev evaluation a Train worker reports reaches Tune through
:class:`SplitReportCallback` (a ``TuneReportCallback`` that adds the sweep's view of the trial):

    dev_mean      mean dev metric over the splits seen so far, the current split at its latest epoch
                  (after the last split: the objective, the mean over all splits)
    epochs_total  epochs trained so far, summed over splits: ASHA's resource
    steps_total   optimizer steps so far, summed over splits: the compute a trial used

so ASHA compares trials at equal training budget on the same quantity that picks the winner.

Sweep folder (``<storage_path>/<run.name>/``)::

    config.yaml                       the resolved tune config (a rerun with another config is refused)
    leaderboard.md / leaderboard.csv  per task: best config, its mean ± std over splits, trials, compute
    <task>/experiment/                Ray Tune's experiment (what ``Tuner.restore`` reads)
    <task>/trials/<trial>/            each trial's fine-tuning runs (metrics.json per split, checkpoints)
    <task>/trials.csv                 every trial: params, dev_mean, stopped or completed, epochs, steps
    <task>/sweep.png                  dev_mean over epochs per trial; stopped trials end in an x
    <task>/best_finetune.yaml         the best config as a ready-to-run jobs/finetune.py config
    <task>/best/...                   that config fine-tuned on base.submission_split, model exported

Interrupted sweeps (driver killed, cluster lost) continue on the same command: the experiment is
restored with ``Tuner.restore``; finished trials are kept, unfinished ones start again and their
finished splits and Train checkpoints are reused.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import time
from typing import Any

from fs_ray import storage
from fs_ray.config import ConfigError, resolved_yaml, set_dotted, to_yaml, validate
from fs_ray.objectives import METHODS
from fs_ray.run_configs import FinetuneConfig, SearchParam, TuneConfig
from fs_ray.training.finetune import FinetuneError, plan, run_split, task_specs

TRIAL_FILE = "trial.json"
TRIAL_DRIVER_MEMORY = 256 * 2**20
METHOD_KEY = "method"
# what a trial can train: neural methods that train (not the zero-shot scorer, not the TF-IDF floor)
TRAINABLE = tuple(m.name for m in METHODS.values() if m.neural and m.trains)


class SweepError(RuntimeError):
    """A sweep that cannot start; the message names the field or file to fix."""


# ---------------------------------------------------------------------------------------------
# config: search space -> Tune, trial params -> finetune config
# ---------------------------------------------------------------------------------------------
def _tune_domain(param: SearchParam):
    from ray import tune

    if param.type == "choice":
        return tune.choice(param.values)
    if param.type == "grid":
        return tune.grid_search(param.values)
    if param.type == "uniform":
        return tune.uniform(param.low, param.high)
    if param.type == "loguniform":
        return tune.loguniform(param.low, param.high)
    return tune.randint(int(param.low), int(param.high) + 1)  # both ends included


def param_space(cfg: TuneConfig) -> dict[str, Any]:
    return {key: _tune_domain(p) for key, p in cfg.search_space.items()}


def _example_values(param: SearchParam) -> list[Any]:
    """Values that together cover what the distribution can produce (every candidate, both ends)."""
    if param.type in ("choice", "grid"):
        return list(param.values)
    if param.type == "randint":
        return [int(param.low), int(param.high)]
    return [param.low, param.high]


def _splits_for(cfg: TuneConfig, spec) -> list[str]:
    if cfg.splits:
        return list(cfg.splits)
    numbered = [s for s in spec.splits if s.isdigit()]
    return numbered or list(spec.splits)


def trial_config(
    cfg: TuneConfig, task: str, params: dict[str, Any], splits: list[str] | None = None
) -> FinetuneConfig:
    """The finetune config of one trial: ``base`` (with its per_task overrides for ``task``), one
    neural method, the sweep's splits, then the trial's sampled values."""
    base = cfg.base.for_task(task) if task in cfg.base.per_task else cfg.base
    data = base.model_dump(mode="json")
    data["task"]["names"] = [task]
    data["per_task"] = {}
    if splits is not None:
        data["task"]["splits"] = splits
    methods = [m for m in base.methods if m in TRAINABLE]
    data["methods"] = [params.get(METHOD_KEY, methods[0] if methods else TRAINABLE[0])]
    for key, value in params.items():  # set as sampled (not through --set text: 1e-05 stays a float)
        if key == METHOD_KEY:
            continue
        try:
            set_dotted(data, key.split("."), value)
        except ConfigError as err:
            raise SweepError(f"search_space.{key}: {err}") from None
    try:
        return validate(FinetuneConfig, data, f"search_space for task {task}")
    except ConfigError as err:
        raise SweepError(str(err)) from None


def check(cfg: TuneConfig) -> dict[str, Any]:
    """Everything checked before any trial starts: each search key names a finetune field and its
    extreme values validate, methods are trainable, every task's files and labels load."""
    for key, param in cfg.search_space.items():
        if key == METHOD_KEY:
            bad = [v for v in param.values or [] if v not in TRAINABLE]
            if bad or param.type not in ("choice", "grid"):
                raise SweepError(
                    f"search_space.{METHOD_KEY}: a choice or grid of {' / '.join(TRAINABLE)} (got {bad})"
                )
            continue
        if key.split(".")[0] in ("run", "task", "per_task", "methods", "kind", "tokenizer", "task_specs"):
            raise SweepError(f"search_space.{key}: {key.split('.')[0]} is fixed by the sweep, not searched")
        for value in _example_values(param):
            try:
                trial_config(cfg, cfg.tasks[0], {key: value})
            except SweepError as err:
                raise SweepError(f"search_space.{key} = {value!r}: {err}") from None
    if not any(m in TRAINABLE for m in cfg.base.methods) and METHOD_KEY not in cfg.search_space:
        raise SweepError(f"base.methods: {cfg.base.methods} has nothing to train ({' or '.join(TRAINABLE)})")
    plans = {}
    for task in cfg.tasks:
        try:
            spec = task_specs(trial_config(cfg, task, {}))[task]
        except FinetuneError as err:
            raise SweepError(str(err)) from None
        splits = _splits_for(cfg, spec)
        tcfg = trial_config(cfg, task, {}, splits)
        try:
            plans[task] = plan(tcfg)
        except FinetuneError as err:
            raise SweepError(f"task {task}: {err}") from None
        plans[task]["split_names"] = splits
        methods = cfg.search_space[METHOD_KEY].values if METHOD_KEY in cfg.search_space else tcfg.methods
        shape = plans[task]["specs"][task].shape
        for method in methods:
            problem = METHODS[method].check_shape(shape)
            if problem:
                raise SweepError(f"task {task}: {method}: {problem}")
    return plans


def max_concurrent(cfg: TuneConfig, resources: dict[str, float]) -> int:
    """Trials whose worker groups fit the cluster at once (at least 1)."""
    if cfg.max_concurrent_trials:
        return cfg.max_concurrent_trials
    scaling = cfg.base.scaling
    fits = [int(resources.get("CPU", 0) // max(scaling.num_workers * scaling.cpus_per_worker, 1e-9))]
    if scaling.use_gpu:
        fits.append(int(resources.get("GPU", 0) // scaling.num_workers))
    return max(1, min(fits))


# ---------------------------------------------------------------------------------------------
# trial side
# ---------------------------------------------------------------------------------------------
def _callback_class():
    from ray.tune.integration.ray_train import TuneReportCallback

    class SplitReportCallback(TuneReportCallback):
        """Forward each dev evaluation of a split's Train run to Tune as the trial's running view."""

        def __init__(self, finished: list[dict], split_index: int, n_splits: int, metric: str):
            super().__init__()
            self.finished, self.split_index, self.n_splits = finished, split_index, n_splits
            self.metric = metric

        def after_report(self, run_context, metrics, checkpoint):
            m = metrics[0]
            current = m.get(f"dev_{self.metric}")
            if current is None:  # the export report at the very end carries no dev metric
                return
            values = [r["value"] for r in self.finished] + [current]
            view = {
                "dev_mean": statistics.fmean(values),
                "dev_current": current,
                "split_index": self.split_index,
                "splits_done": len(self.finished),
                "n_splits": self.n_splits,
                "epoch": m["epoch"],
                "epochs_total": _epochs(self.finished) + m["epoch"],
                "steps_total": _steps(self.finished) + m.get("step", 0),
                "train_loss": m["train_loss"],
                "all_splits_done": 0,
            }
            super().after_report(run_context, [view], None)

    return SplitReportCallback


def _epochs(records: list[dict]) -> int:
    return sum(r["history"][-1]["epoch"] for r in records if r["history"])


def _steps(records: list[dict]) -> int:
    return sum(r["history"][-1].get("step", 0) for r in records if r["history"])


def trial_fn(params: dict[str, Any], *, sweep: dict[str, Any], splits: dict, tokenizer) -> None:
    """One Tune trial: fine-tune every split of the sweep with the trial's params, report as it goes."""
    import ray.tune

    from fs_ray.training.finetune import quiet_ray_data

    quiet_ray_data()
    cfg = TuneConfig.model_validate(sweep["cfg"])
    task = sweep["task"]
    trial_id = ray.tune.get_context().get_trial_id()
    names = sweep["split_names"]
    fcfg = trial_config(cfg, task, params, names)
    data = fcfg.model_dump(mode="json")
    data["run"].update(name=trial_id, storage_path=sweep["trials_dir"])
    data["export"] = "none"
    fcfg = FinetuneConfig.model_validate(data)
    trial_dir = storage.join(sweep["trials_dir"], trial_id)
    method = fcfg.methods[0]
    callback = _callback_class()
    finished: list[dict] = []
    t0 = time.monotonic()
    for i, name in enumerate(names):
        split = splits[name]
        record = run_split(
            fcfg,
            split,
            method,
            tokenizer,
            trial_dir,
            log=print,
            predict_test=False,
            callbacks=[callback(list(finished), i, len(names), split.spec.metric)],
        )
        finished.append(record)
    values = [r["value"] for r in finished]
    summary = {
        "trial_id": trial_id,
        "task": task,
        "params": params,
        "method": method,
        "metric": finished[0]["metric"],
        "values": dict(zip(names, values, strict=True)),
        "dev_mean": statistics.fmean(values),
        "dev_std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "epochs_total": _epochs(finished),
        "steps_total": _steps(finished),
        "seconds": round(time.monotonic() - t0, 1),
    }
    storage.write_text(storage.join(trial_dir, TRIAL_FILE), json.dumps(summary, ensure_ascii=False, indent=2))
    ray.tune.report(
        {
            "dev_mean": summary["dev_mean"],
            "dev_std": summary["dev_std"],
            "splits_done": len(names),
            "n_splits": len(names),
            "epochs_total": summary["epochs_total"],
            "steps_total": summary["steps_total"],
            "all_splits_done": 1,
        }
    )


# ---------------------------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------------------------
def _search_alg(cfg: TuneConfig, concurrency: int):
    """The searcher, holding at most ``concurrency`` trials in flight (Tune's own
    ``max_concurrent_trials`` does not reach a variant generator passed in as an object)."""
    if cfg.search_alg == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=cfg.run.seed), max_concurrent=concurrency)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=cfg.run.seed, max_concurrent=concurrency)


def _progress(exp_path: str) -> dict[str, list[tuple[float, float]]]:
    """trial id -> [(epochs_total, dev_mean)] from the progress.csv files Tune keeps per trial."""
    import pyarrow.fs as pafs

    fs, root = storage.resolve(exp_path)
    out: dict[str, list[tuple[float, float]]] = {}
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return out
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.type != pafs.FileType.Directory:
            continue
        path = storage.join(exp_path, info.base_name, "progress.csv")
        if not storage.exists(path):
            continue
        rows = list(csv.DictReader(io.StringIO(storage.read_text(path))))
        points = [
            (float(r["epochs_total"]), float(r["dev_mean"]))
            for r in rows
            if r.get("epochs_total") not in (None, "") and r.get("dev_mean") not in (None, "")
        ]
        if rows and points:
            out[rows[0]["trial_id"]] = points
    return out


def _asha_class():
    from ray.tune.schedulers import ASHAScheduler

    class ResumableASHA(ASHAScheduler):
        """ASHA whose rungs survive ``Tuner.restore``: Ray pickles the scheduler once, when the
        sweep starts, so a restored sweep would forget every result reported before the driver
        died and could no longer stop a trial against them. The rungs are refilled from the
        trials' progress.csv the first time the restored scheduler sees a trial."""

        def __init__(self, experiment_path: str, **kwargs):
            super().__init__(**kwargs)
            self.experiment_path = experiment_path
            self._seeded = False

        def _seed(self) -> None:
            self._seeded = True
            for trial_id, points in _progress(self.experiment_path).items():
                for bracket in self._brackets:
                    for milestone, recorded in bracket._rungs:
                        reached = [v for t, v in points if t >= milestone]
                        if reached and trial_id not in recorded:
                            recorded[trial_id] = reached[0]

        def on_trial_add(self, tune_controller, trial) -> None:
            if not self._seeded:
                self._seed()
            super().on_trial_add(tune_controller, trial)

    return ResumableASHA


def _scheduler(cfg: TuneConfig, task: str, n_splits: int, exp_path: str):
    """ASHA over epochs summed across a trial's splits. Its rungs stop below the last evaluation of
    the longest trial (``stop_last_trials=False``), so a trial that trained every epoch is never cut
    at its very last report, just before it would have finished."""
    if not cfg.asha.enabled:
        return None
    base = cfg.base.for_task(task) if task in cfg.base.per_task else cfg.base
    epochs = [base.optim.epochs]
    every = [base.checkpoint.every_n_epochs]
    for key, into in (("optim.epochs", epochs), ("checkpoint.every_n_epochs", every)):
        if key in cfg.search_space:
            into += [float(v) for v in _example_values(cfg.search_space[key])]
    total = n_splits * math.ceil(max(epochs))
    max_t = max(cfg.asha.grace_period, total - int(min(every)))
    return _asha_class()(
        exp_path,
        time_attr="epochs_total",
        max_t=max_t,
        grace_period=cfg.asha.grace_period,
        reduction_factor=cfg.asha.reduction_factor,
        stop_last_trials=False,
    )


def _trial_rows(results, trials_dir: str) -> list[dict]:
    rows = []
    for result in results:
        if result.metrics is None or "dev_mean" not in (result.metrics or {}):
            continue
        trial_id = result.metrics.get("trial_id") or os.path.basename(result.path).split("_")[-1]
        history = result.metrics_dataframe
        curve = []
        if history is not None and "dev_mean" in history:
            curve = [
                (float(e), float(v))
                for e, v in zip(history["epochs_total"], history["dev_mean"], strict=True)
                if not (isinstance(v, float) and math.isnan(v))
            ]
        done = bool(result.metrics.get("all_splits_done"))
        summary = {}
        path = storage.join(trials_dir, trial_id, TRIAL_FILE)
        if done and storage.exists(path):
            summary = json.loads(storage.read_text(path))
        rows.append(
            {
                "trial_id": trial_id,
                "params": {k: v for k, v in result.config.items()},
                "status": "completed" if done else ("error" if result.error else "stopped"),
                "dev_mean": float(result.metrics["dev_mean"]),
                "dev_std": float(result.metrics.get("dev_std", 0.0)) if done else None,
                "values": summary.get("values", {}),
                "metric": summary.get("metric", ""),
                "splits_done": int(result.metrics.get("splits_done", 0)),
                "epochs_total": int(result.metrics.get("epochs_total", 0)),
                "steps_total": int(result.metrics.get("steps_total", 0)),
                "seconds": float(result.metrics.get("time_total_s", 0.0)),
                "curve": curve,
            }
        )
    rows.sort(key=lambda r: (r["status"] != "completed", -r["dev_mean"]))
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items()))


def write_trials_csv(path: str, rows: list[dict]) -> None:
    buf = io.StringIO()
    keys = sorted({k for r in rows for k in r["params"]})
    writer = csv.writer(buf)
    writer.writerow(
        ["trial_id", *keys, "status", "dev_mean", "dev_std", "splits_done", "epochs_total", "steps_total",
         "seconds"]
    )  # fmt: skip
    for r in rows:
        writer.writerow(
            [r["trial_id"], *[r["params"].get(k, "") for k in keys], r["status"], f"{r['dev_mean']:.6f}",
             "" if r["dev_std"] is None else f"{r['dev_std']:.6f}", r["splits_done"], r["epochs_total"],
             r["steps_total"], round(r["seconds"], 1)]
        )  # fmt: skip
    storage.write_text(path, buf.getvalue())


def plot_sweep(path: str, task: str, rows: list[dict], best_id: str | None) -> None:
    """dev_mean over epochs (summed over splits) per trial; stopped trials dashed, ending in an x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for r in rows:
        if not r["curve"]:
            continue
        xs, ys = zip(*r["curve"], strict=True)
        ys = [100 * y for y in ys]
        best = r["trial_id"] == best_id
        if r["status"] == "completed":
            label = f"{r['trial_id']}{' (best)' if best else ''}: {_params_text(r['params'])}"
            ax.plot(xs, ys, "-", lw=2.5 if best else 1.2, marker="o", ms=3,
                    label=label if len(label) <= 90 else label[:87] + "...")  # fmt: skip
        else:
            (line,) = ax.plot(xs, ys, "--", lw=1, alpha=0.7)
            ax.plot(xs[-1], ys[-1], "x", ms=9, mew=2, color=line.get_color())
    ax.set_xlabel("epochs trained (summed over the trial's splits)")
    ax.set_ylabel("dev mean over splits so far (%)")
    stopped = sum(r["status"] == "stopped" for r in rows)
    ax.set_title(f"{task}: {len(rows)} trials, {stopped} stopped early (x)")
    ax.grid(alpha=0.3)
    if any(r["status"] == "completed" for r in rows):
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    if storage.is_uri(path):
        fs, p = storage.resolve(path)
        with fs.open_output_stream(p) as f:
            f.write(buf.getvalue())
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(buf.getvalue())


def best_finetune_config(cfg: TuneConfig, task: str, params: dict, run_dir: str) -> FinetuneConfig:
    """The winner as a normal finetune run: every split of the task's protocol, exports its model."""
    best = trial_config(cfg, task, params)
    data = best.model_dump(mode="json")
    data["task"]["splits"] = None
    data["run"].update(name="best", storage_path=storage.join(run_dir, task))
    data["export"] = "submission"
    return FinetuneConfig.model_validate(data)


def leaderboard_markdown(board: list[dict]) -> str:
    lines = [
        "| task | best config | dev mean ± std | splits | trials (completed / stopped) | "
        "epochs | steps | compute (s) |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for b in board:
        lines.append(
            f"| {b['task']} | {b['best_config']} | {100 * b['dev_mean']:.1f} ± {100 * b['dev_std']:.1f} | "
            f"{b['splits']} | {b['trials']} ({b['completed']} / {b['stopped']}) | {b['epochs']} | "
            f"{b['steps']} | {b['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_leaderboard(out: str, board: list[dict]) -> None:
    buf = io.StringIO()
    fields = ["task", "metric", "best_trial", "best_config", "dev_mean", "dev_std", "splits", "trials",
              "completed", "stopped", "epochs", "steps", "seconds"]  # fmt: skip
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for b in board:
        writer.writerow({**b, "dev_mean": f"{b['dev_mean']:.6f}", "dev_std": f"{b['dev_std']:.6f}"})
    storage.write_text(storage.join(out, "leaderboard.csv"), buf.getvalue())
    storage.write_text(storage.join(out, "leaderboard.md"), leaderboard_markdown(board))


def _check_same_config(out: str, cfg: TuneConfig) -> None:
    path = storage.join(out, "config.yaml")
    text = resolved_yaml(cfg)
    if storage.exists(path) and not cfg.overwrite:
        import yaml

        def core(t: str) -> dict:
            d = yaml.safe_load(t) or {}
            for k in ("overwrite", "export_best", "max_concurrent_trials"):
                d.pop(k, None)
            return d

        if core(storage.read_text(path)) != core(text):
            raise SweepError(
                f"run.name: {out} holds a sweep with a different config; resume it with the same config, "
                "pick a new run.name, or set overwrite: true"
            )
    if cfg.overwrite and storage.exists(out):
        storage.remove_tree(out)
    storage.write_text(path, text)


def sweep_task(cfg: TuneConfig, task: str, task_plan: dict, out: str, log=print) -> dict:
    """One task's Tune experiment (restored if it exists); returns its leaderboard row."""
    import ray
    from ray import tune

    names = task_plan["split_names"]
    task_dir = storage.join(out, task)
    trials_dir = storage.join(task_dir, "trials")
    exp_name = "experiment"
    exp_path = storage.join(task_dir, exp_name)
    trainable = tune.with_resources(
        tune.with_parameters(
            trial_fn,
            sweep={
                "cfg": cfg.model_dump(mode="json"),
                "task": task,
                "split_names": names,
                "trials_dir": trials_dir,
            },
            splits={n: task_plan["splits"][task][n] for n in names},
            tokenizer=task_plan["tokenizer"],
        ),
        # A trial only drives its Train runs, whose workers hold the CPUs/GPUs; it reserves memory
        # instead (Tune refuses an empty request, and a CPU share would starve a worker group).
        {"memory": TRIAL_DRIVER_MEMORY},
    )
    concurrency = max_concurrent(cfg, ray.cluster_resources())
    if tune.Tuner.can_restore(exp_path):
        log(f"[tune] {task}: resuming the sweep in {exp_path} (finished trials are kept)")
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True)
    else:
        log(
            f"[tune] {task}: {cfg.num_samples} sample(s) of {sorted(cfg.search_space)} with {cfg.search_alg}, "
            f"ASHA {'on' if cfg.asha.enabled else 'off'}, {len(names)} split(s) per trial, "
            f"{concurrency} trial(s) at a time"
        )
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(cfg),
            tune_config=tune.TuneConfig(
                metric="dev_mean",
                mode="max",
                search_alg=_search_alg(cfg, concurrency),
                scheduler=_scheduler(cfg, task, len(names), exp_path),
                num_samples=cfg.num_samples,
            ),
            run_config=tune.RunConfig(
                name=exp_name,
                storage_path=task_dir,
                failure_config=tune.FailureConfig(max_failures=cfg.trial_max_failures),
                verbose=1,
            ),
        )
    results = tuner.fit()
    rows = _trial_rows(results, trials_dir)
    completed = [r for r in rows if r["status"] == "completed"]
    if not completed:
        errors = [str(r.error) for r in results if r.error]
        raise SweepError(
            f"task {task}: no trial completed" + (f"; first error: {errors[0]}" if errors else "")
        )
    best = completed[0]
    write_trials_csv(storage.join(task_dir, "trials.csv"), rows)
    plot_sweep(storage.join(task_dir, "sweep.png"), task, rows, best["trial_id"])
    best_cfg = best_finetune_config(cfg, task, best["params"], out)
    storage.write_text(
        storage.join(task_dir, "best_finetune.yaml"),
        f"# best of sweep {cfg.run.name} on {task}: trial {best['trial_id']}, dev mean "
        f"{100 * best['dev_mean']:.2f} over splits {names}\n"
        f"# python jobs/finetune.py --config {storage.join(task_dir, 'best_finetune.yaml')}\n"
        + to_yaml(best_cfg),
    )
    row = {
        "task": task,
        "metric": best["metric"],
        "best_trial": best["trial_id"],
        "best_config": _params_text(best["params"]),
        "dev_mean": best["dev_mean"],
        "dev_std": best["dev_std"] or 0.0,
        "splits": len(names),
        "trials": len(rows),
        "completed": len(completed),
        "stopped": sum(r["status"] == "stopped" for r in rows),
        "epochs": sum(r["epochs_total"] for r in rows),
        "steps": sum(r["steps_total"] for r in rows),
        "seconds": sum(r["seconds"] for r in rows),
        "rows": rows,
        "best_config_path": storage.join(task_dir, "best_finetune.yaml"),
    }
    if cfg.export_best:
        from fs_ray.training import finetune

        data = best_cfg.model_dump(mode="json")
        sub = cfg.base.submission_split
        spec = task_plan["specs"][task]
        data["task"]["splits"] = [sub if sub in spec.splits else spec.splits[-1]]
        log(f"[tune] {task}: fine-tuning the best config on split {data['task']['splits'][0]} to export it")
        result = finetune.run(FinetuneConfig.model_validate(data), log=log)
        (record,) = result["records"]
        row["export"] = storage.join(
            result["run_dir"], task, record["method"], f"split_{record['split']}", "export"
        )
        row["export_dev"] = record["value"]
    return row


def absolute_paths(cfg: TuneConfig) -> TuneConfig:
    """Local paths of the base run made absolute: trials run in Tune's per-trial working folders."""
    data = cfg.model_dump(mode="json")
    for section, key in (("model", "from_pretrained"), ("task", "data_root"), ("tokenizer", "source")):
        value = data["base"].get(section, {}).get(key)
        if isinstance(value, str) and "://" not in value and os.path.exists(value):
            data["base"][section][key] = os.path.abspath(value)
    return TuneConfig.model_validate(data)


def run(cfg: TuneConfig, log=print) -> dict[str, Any]:
    """Sweep every task of the config on the current Ray cluster; returns the leaderboard rows."""
    import ray

    cfg = absolute_paths(cfg)
    plans = check(cfg)
    out = cfg.run.run_dir()
    _check_same_config(out, cfg)
    if not ray.is_initialized():
        ray.init()
    try:
        storage.check_shared(out)  # trial drivers and workers on every node write here
    except storage.StorageError as err:
        raise SweepError(str(err)) from None
    board = []
    for task in cfg.tasks:
        board.append(sweep_task(cfg, task, plans[task], out, log))
        write_leaderboard(out, board)
    log(f"[tune] leaderboard: {storage.join(out, 'leaderboard.md')}")
    log(leaderboard_markdown(board))
    return {"sweep_dir": out, "board": board}


def main(cfg: TuneConfig) -> int:
    import sys

    try:
        run(cfg)
    except (SweepError, FinetuneError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
