"""Evaluate a fine-tuned (or pretrained) exported model on a task's dev and test files, with no training.

    python jobs/evaluate.py --set model.from_pretrained=runs/eprstmt-tiny/eprstmt/head/split_few_all/export
    python jobs/evaluate.py --set model.from_pretrained=runs/erlangshen-tiny/export \
        --set methods=[unimc_zero] --set task.names=[eprstmt,tnews] --set task.data_root=../shared/data

A folder written by jobs/finetune.py carries fs_ray_task.json: its task, labels, method, max_len and
truncation become the defaults (any --set still wins). A released classifier without one (e.g.
Erlangshen-Roberta-110M-Similarity) is scored with its own head on the task.names you give, encoded
as that task's config says (pairs for afqmc/ocnli); a plain pretrained MLM folder is evaluated
zero-shot with UniMC (methods=[unimc_zero]). Output, as for jobs/finetune.py: metrics, dev/test
predictions, FewCLUE submission files and results.md under <run.storage_path>/<run.name>.
Exit status 2: bad config, model folder or task data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fs_ray.cli import run_cli
from fs_ray.run_configs import FinetuneConfig
from fs_ray.training.checkpoint import TASK_FILE
from fs_ray.training.finetune import main


def card_defaults(argv: list[str]) -> list[str]:
    """--set overrides implied by the model folder's fs_ray_task.json (placed first, so the user's win)."""
    folder = next(
        (a.split("=", 1)[1] for a in argv if a.startswith("model.from_pretrained=")),
        None,
    )
    card_path = Path(folder or "") / TASK_FILE
    defaults = ["optim.epochs=0", "run.name=evaluate"]
    if folder and card_path.is_file():
        card = json.loads(card_path.read_text(encoding="utf-8"))
        from fs_ray.objectives import get_method

        method = get_method(card["method"]).evaluate_as or card["method"]
        defaults += [
            f"task.names=[{card['task']}]",
            f"methods=[{method}]",
            f"task.max_len={card['max_len']}",
            f"task.truncation={card['truncation']}",
        ]
    elif folder:
        # a released classifier (no card) is scored with its own head; the task config (task.names)
        # says how inputs are encoded (single, pair, ...); a plain MLM is scored zero-shot
        from fs_ray.pretrained import ModelFolder, PretrainedError

        try:
            kind = ModelFolder.open(folder).kind
        except (PretrainedError, OSError, ValueError):
            kind = "mlm"  # the run's plan reports what is wrong with the folder
        defaults.append("methods=[head]" if kind in ("classifier", "tagger") else "methods=[unimc_zero]")
    return defaults


if __name__ == "__main__":
    args = sys.argv[1:]
    sets = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--set"]
    implied = [x for d in card_defaults(sets) for x in ("--set", d)]
    sys.exit(run_cli(FinetuneConfig, main, __doc__, argv=implied + args))
