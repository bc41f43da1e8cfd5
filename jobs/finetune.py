"""Fine-tune and evaluate on labelled Chinese tasks: every task x method x split, one results table.

    ray job submit --working-dir . -- python jobs/finetune.py --config jobs/configs/finetune_eprstmt_tiny.yaml
    python jobs/finetune.py --config jobs/configs/finetune_fewclue.yaml \
        --set model.from_pretrained=runs/erlangshen-tiny/export --set task.data_root=../shared/data

Methods: head (task head fine-tuned on Ray Train + DeepSpeed), unimc (options rendered into the
input, scored by the MLM head, trained few-shot), unimc_zero (the same, no training), tfidf (char
n-gram TF-IDF + logistic regression, the floor every table shows). FewCLUE tasks run splits 0-4
(reported as mean ± std) and few_all; few_all's model predicts test.json into
<run dir>/submission/<method>/<task>_predict.json in FewCLUE's format.
Results: <run dir>/results.md and results.csv; per run: metrics.json, dev/test predictions, export/.
Rerunning the same command reuses finished runs and resumes interrupted ones from their last epoch.
Exit status 2: bad config or task data (nothing was started; the message names file, line, field).
"""

from __future__ import annotations

import sys

from fs_ray.cli import run_cli
from fs_ray.run_configs import FinetuneConfig
from fs_ray.training.finetune import main

if __name__ == "__main__":
    sys.exit(run_cli(FinetuneConfig, main, __doc__))
