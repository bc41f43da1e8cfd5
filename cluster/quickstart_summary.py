"""What the quickstart trained and how well it did, read from its run folders.

    .venv/bin/python cluster/quickstart_summary.py runs/quickstart/erlangshen-tiny-<stamp> runs/quickstart/eprstmt-<stamp>

Pretraining: the whole-word MLM loss at the first and last logged step. Fine-tuning: per split,
the dev accuracy of the task head next to the TF-IDF floor, chance and always guessing the
most frequent dev label; a head at or below that guess is called out, not hidden.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path


def pretraining_line(run: Path) -> str:
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    first, last = records[0], records[-1]
    return (
        f"pretraining : whole-word MLM loss {first['loss']:.2f} at step {first['step']} -> "
        f"{last['loss']:.2f} at step {last['step']} ({run})"
    )


def finetuning_lines(run: Path) -> list[str]:
    lines = []
    for split_dir in sorted((run / "eprstmt" / "head").glob("split_*")):
        split = split_dir.name.removeprefix("split_")
        head = json.loads((split_dir / "metrics.json").read_text())["value"]
        floor_file = run / "eprstmt" / "tfidf" / split_dir.name / "metrics.json"
        floor = json.loads(floor_file.read_text())["value"] if floor_file.exists() else None
        gold = [json.loads(x)["gold"] for x in (split_dir / "dev_predictions.jsonl").read_text().splitlines() if x]
        label, n = Counter(gold).most_common(1)[0]
        majority, chance = n / len(gold), 1 / len(set(gold))
        verdict = "learned" if head > max(majority, chance) + 0.05 else "NOT above always guessing"
        lines.append(
            f"fine-tuning : eprstmt split {split}: head {100 * head:.1f}% dev accuracy"
            + (f", TF-IDF floor {100 * floor:.1f}%" if floor is not None else "")
            + f", majority ({label}) {100 * majority:.1f}%, chance {100 * chance:.1f}% -> {verdict}"
        )
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    pretrain, finetune = (Path(a) for a in argv)
    print("\n".join(["", "== what was learned", pretraining_line(pretrain), *finetuning_lines(finetune)]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
