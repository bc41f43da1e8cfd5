"""Sweep fine-tuning hyperparameters with Ray Tune, for one task or all of FewCLUE.

    python tune/fewclue.py --config tune/configs/tune_eprstmt_tiny.yaml
    ray job submit --working-dir . -- python tune/fewclue.py --config tune/configs/tune_fewclue.yaml \\
        --set base.task.data_root=/data/clue

Every trial fine-tunes the task's splits (FewCLUE: 0-4) one after another, each split its own
Ray Train TorchTrainer; the objective is the mean dev metric over the splits. ASHA stops weak
trials early, comparing trials at equal epochs trained. Search space in the config:

    search_space:
      optim.lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}
      optim.epochs: {type: choice, values: [10, 20, 30]}
      optim.micro_batch_size: {type: choice, values: [4, 8, 16]}
      optim.warmup_steps / optim.weight_decay / run.seed-free fields / model.overrides.hidden_dropout_prob
      method: {type: choice, values: [head, unimc]}

types: choice, grid, uniform, loguniform, randint (both ends included); search_alg: random, grid, optuna.
Output in <storage_path>/<run.name>/: leaderboard.md/.csv, and per task trials.csv, sweep.png,
best_finetune.yaml (ready for jobs/finetune.py) and best/ (that config fine-tuned on the submission
split, model exported). Rerunning the same command resumes an interrupted sweep (Tuner.restore):
finished trials are kept. Exit status 2: bad config, search space or task data (nothing was started).
"""

from __future__ import annotations

import sys

from fs_ray.cli import run_cli
from fs_ray.run_configs import TuneConfig
from fs_ray.tuning.sweep import main

if __name__ == "__main__":
    sys.exit(run_cli(TuneConfig, main, __doc__))
