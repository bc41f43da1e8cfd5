"""How much of a real spelling-error set the shipped confusion sets explain (by hand, not in CI):
the figures behind the ``denoise`` objective's defaults (README, Pretraining).

    .venv/bin/python tests/benchmarks/confusion_coverage.py [--data ../shared/data]

Reads SIGHAN-2015's training set (``<data>/sighan15/train.json``, pycorrector's JSON) and counts,
over its marked errors, the share whose correct character lists the wrong one among its same-sound
or similar-shape confusions, and the errors per character.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fs_ray.objectives.noise import CONFUSION_DIR, read_same_pinyin, read_same_stroke


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data", help="folder holding sighan15/train.json")
    args = parser.parse_args()
    rows = json.loads((Path(args.data) / "sighan15" / "train.json").read_text(encoding="utf-8"))
    sound = read_same_pinyin(CONFUSION_DIR / "same_pinyin.txt")
    shape = read_same_stroke(CONFUSION_DIR / "same_stroke.txt")
    errors = by_sound = by_shape = either = chars = 0
    for row in rows:
        wrong, right = row["original_text"], row["correct_text"]
        chars += len(right)
        for i in row["wrong_ids"]:
            if i >= len(right):
                continue
            errors += 1
            s, h = wrong[i] in sound.get(right[i], []), wrong[i] in shape.get(right[i], [])
            by_sound, by_shape, either = by_sound + s, by_shape + h, either + (s or h)
    print(f"{len(rows)} sentences, {errors} errors, {errors / chars:.1%} of the characters")
    print(f"covered by the confusion sets: {either / errors:.1%} (same sound {by_sound / errors:.1%}, "
          f"similar shape {by_shape / errors:.1%})")  # fmt: skip


if __name__ == "__main__":
    main()
