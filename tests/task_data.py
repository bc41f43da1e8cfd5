"""Tiny separable tasks in the FewCLUE shapes, written on the fly for fine-tuning and sweep tests:
a one-character cue decides the label, so a model that learns anything learns them."""

from __future__ import annotations

import json
import random
from pathlib import Path

FILLER = "的一在了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行"
CITIES = ["北京", "上海", "广州", "深圳"]
PLAIN = "".join(c for c in FILLER if c not in "们门在再做作啊阿")


def _filler(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(FILLER) for _ in range(n))


def _write_tasks(root: Path, n_single: int = 96, single_splits: tuple[str, ...] = ("0",)) -> None:
    rng = random.Random(0)

    def jsonl(path: Path, rows: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    def single(n: int, offset: int) -> list[dict]:
        rows = []
        for i in range(n):
            y = rng.random() < 0.5
            rows.append(
                {
                    "id": offset + i,
                    "sentence": _filler(rng, 6) + ("好" if y else "坏") + _filler(rng, 6),
                    "label": "pos" if y else "neg",
                }
            )
        return rows

    for k in single_splits:
        jsonl(root / f"sep_single/train_{k}.json", single(n_single, 0))
        jsonl(root / f"sep_single/dev_{k}.json", single(32, 100))
    jsonl(
        root / "sep_single/test.json", [{k: v for k, v in r.items() if k != "label"} for r in single(16, 200)]
    )

    def choice(n: int) -> list[dict]:
        rows = []
        for i in range(n):
            cands = [_filler(rng, 2) for _ in range(4)]
            answer = rng.randrange(4)
            cands[answer] = "甲" + cands[answer][1]
            rows.append(
                {
                    "id": i,
                    "content": _filler(rng, 5) + "#idiom#" + _filler(rng, 5),
                    "candidates": cands,
                    "answer": answer,
                }
            )
        return rows

    jsonl(root / "sep_choice/train_0.json", choice(48))
    jsonl(root / "sep_choice/dev_0.json", choice(24))

    def tagged(n: int) -> list[str]:
        lines = ["text_a\tlabel"]
        for _ in range(n):
            a, city, b = _filler(rng, 4), rng.choice(CITIES), _filler(rng, 4)
            chars = list(a + city + b)
            tags = ["O"] * 4 + ["B-LOC", "I-LOC"] + ["O"] * 4
            lines.append(" ".join(chars) + "\t" + " ".join(tags))
        return lines

    def generation(n: int) -> list[str]:
        lines = []  # CSL's layout: `to title \t source \t target`, no header, one file
        for _ in range(n):
            city = rng.choice(CITIES)
            lines.append(f"to title\t{_filler(rng, 8)}{city}{_filler(rng, 8)}\t{city}新闻")
        return lines

    (root / "sep_gen").mkdir()
    (root / "sep_gen/title.tsv").write_text("\n".join(generation(160)) + "\n", encoding="utf-8")

    def correction(n: int) -> list[dict]:
        """SIGHAN's JSON layout; one character of a fixed set is miswritten as its confusion in 3 of 4
        sentences (们->门, 在->再, 做->作, 啊->阿), so a model that learns anything fixes them."""
        rng = random.Random(7)  # its own: the other tasks' data stay as they were
        rows = []
        wrong = {"们": "门", "在": "再", "做": "作", "啊": "阿"}
        for i in range(n):
            plain = "".join(rng.choice(PLAIN) for _ in range(6))  # never one of the confused characters
            clean = rng.choice(["我们", "他们"]) + plain[:3] + "在" + rng.choice(CITIES) + "做" + plain[3:] + "啊"
            noisy = list(clean)
            if rng.random() < 0.75:
                at = rng.choice([j for j, c in enumerate(clean) if c in wrong])
                noisy[at] = wrong[clean[at]]
            rows.append({"id": f"c{i}", "original_text": "".join(noisy), "correct_text": clean})
        return rows

    (root / "sep_corr").mkdir()
    (root / "sep_corr/train.json").write_text(json.dumps(correction(160), ensure_ascii=False), encoding="utf-8")

    (root / "sep_tag").mkdir()
    (root / "sep_tag/train.tsv").write_text("\n".join(tagged(48)), encoding="utf-8")
    (root / "sep_tag/dev.tsv").write_text("\n".join(tagged(24)), encoding="utf-8")


SPECS = [
    "task_specs.sep_single={shape: single, path: sep_single, text_fields: [sentence], labels: [neg, pos], "
    "verbalizer: {neg: 坏, pos: 好}, question: 这句话说的是？, splits: ['0'], submission_file: sep_predict.json}",
    "task_specs.sep_choice={shape: choice, path: sep_choice, text_fields: [content], label_field: answer, "
    "splits: ['0'], test_file: null}",
    "task_specs.sep_tag={shape: tagging, path: sep_tag, format: tsv, text_fields: [text_a], splits: [full], "
    "train_file: train.tsv, dev_file: dev.tsv, test_file: null, metric: entity_f1, "
    "labels: [O, B-PER, I-PER, B-LOC, I-LOC, B-ORG, I-ORG]}",
    # generation in CSL's layout: the city in the source is the title's first two characters
    "task_specs.sep_gen={shape: generation, path: sep_gen, format: tsv, columns: [prefix, text, target], "
    "text_fields: [text], label_field: target, splits: [full], train_file: title.tsv, dev_file: title.tsv, "
    "test_file: null, holdout: 40, holdout_seed: 1, prompt: '{text}。标题：', max_target_len: 8}",
    # correction in SIGHAN's JSON-array layout
    "task_specs.sep_corr={shape: correction, path: sep_corr, format: json, text_fields: [original_text], "
    "label_field: correct_text, splits: [full], train_file: train.json, dev_file: train.json, test_file: null, "
    "holdout: 40, holdout_seed: 1, max_target_len: 24}",
]
