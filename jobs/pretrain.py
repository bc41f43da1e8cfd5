"""Pretrain (or continue pretraining) a Fengshenbang model on a prepared corpus with Ray Train + DeepSpeed.

    ray job submit --working-dir . -- python jobs/pretrain.py --config jobs/configs/pretrain_erlangshen_tiny.yaml
    python jobs/pretrain.py --config jobs/configs/pretrain_erlangshen_tiny.yaml --set scaling.num_workers=2

model.family picks the family (the list, with presets, is under model.family below) and with it
the objective (model.objective): erlangshen = Chinese whole-word MLM (jieba boundaries),
wenzhong/yuyuan = causal LM, randeng = T5 span corruption (needs a sentinel vocabulary),
randeng-bart = BART text infilling + sentence permutation, randeng-pegasus = gap sentences (its
corpus prepared with tokenizer.source=pegasus-chinese), zhouwenwang = unified (MLM and causal LM
over one RoFormer; or mlm, clm), bigan = denoise (confusion-set noise rewritten to the clean text;
or clm). Objective rates: model.objective_options.
Checkpoints every checkpoint.every_n_steps under <run.storage_path>/<run.name>; rerunning with the
same name resumes from the latest one at the same step and data position. A killed worker restarts
the worker group from the last checkpoint (checkpoint.max_failures). At the end the last checkpoint
is exported to <run dir>/export as a plain Hugging Face folder.
Exit status 2: bad config or corpus (nothing was started).
"""

from __future__ import annotations

import sys

from fs_ray.cli import run_cli
from fs_ray.run_configs import PretrainConfig


def main(cfg: PretrainConfig) -> int:
    from fs_ray.training.pretrain import PretrainError, pretrain

    try:
        pretrain(cfg)
    except PretrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(PretrainConfig, main, __doc__))
