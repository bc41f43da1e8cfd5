"""Chinese spelling correction scores, as the field reports them.

Sentence level, in the convention of pycorrector's SIGHAN-2015 leaderboard (a sentence that needs
correcting is a positive, one that does not a negative):

- correction: a positive is a true positive when the output equals the target, else a false
  negative; a negative is a true negative when the output is left unchanged, else a false positive
  (so a wrong fix of a wrong sentence costs recall, not precision, as on the leaderboard);
- detection: the same with the *set of changed positions* in place of the text: a positive is found
  when the output changes exactly the target's positions.

Character level: over all sentences, detection precision/recall of the changed positions against
the target's, and correction precision/recall of the positions changed to the target's character.

Positions come from a character alignment of the output with the source (equal lengths: position
by position; otherwise :mod:`difflib` opcodes, an insertion marking the position before which it
falls), so rewriting models whose output length differs are scored too.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def changed_positions(source: str, output: str) -> frozenset[int]:
    """Source positions ``output`` changes (replaced or deleted characters, insertion points)."""
    if len(source) == len(output):
        return frozenset(i for i, (a, b) in enumerate(zip(source, output, strict=True)) if a != b)
    out: set[int] = set()
    for op, i1, i2, _, _ in difflib.SequenceMatcher(None, source, output, autojunk=False).get_opcodes():
        if op in ("replace", "delete"):
            out.update(range(i1, i2))
        elif op == "insert":
            out.add(i1)
    return frozenset(out)


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def correction_scores(
    sources: Sequence[str], targets: Sequence[str], outputs: Sequence[str]
) -> dict[str, float]:
    """Sentence- and character-level detection and correction P/R/F1 (fractions), the sentence
    accuracy, and the counts behind them."""
    if not (len(sources) == len(targets) == len(outputs)):
        raise ValueError(f"{len(sources)} sources, {len(targets)} targets, {len(outputs)} outputs")
    det = dict.fromkeys(("tp", "fp", "fn", "tn"), 0)
    cor = dict.fromkeys(("tp", "fp", "fn", "tn"), 0)
    char = {"gold": 0, "pred": 0, "det_tp": 0, "cor_tp": 0}
    for src, tgt, out in zip(sources, targets, outputs, strict=True):
        gold, pred = changed_positions(src, tgt), changed_positions(src, out)
        positive = src != tgt
        if positive:
            det["tp" if pred == gold else "fn"] += 1
            cor["tp" if out == tgt else "fn"] += 1
        else:
            det["tn" if not pred else "fp"] += 1
            cor["tn" if out == src else "fp"] += 1
        char["gold"] += len(gold)
        char["pred"] += len(pred)
        char["det_tp"] += len(gold & pred)
        if len(src) == len(tgt) == len(out):
            char["cor_tp"] += sum(out[i] == tgt[i] for i in gold & pred)
        else:  # lengths differ: a position counts when the aligned output character is the target's
            aligned = dict(_aligned(src, out))
            want = dict(_aligned(src, tgt))
            char["cor_tp"] += sum(aligned.get(i) == want.get(i) for i in gold & pred)
    scores: dict[str, float] = {"sentences": float(len(sources)), "positives": float(det["tp"] + det["fn"])}
    for name, counts in (("detect", det), ("correct", cor)):
        p, r, f = _prf(counts["tp"], counts["fp"], counts["fn"])
        scores.update({f"{name}_precision": p, f"{name}_recall": r, f"{name}_f1": f})
    scores["sentence_accuracy"] = (cor["tp"] + cor["tn"]) / len(sources) if sources else 0.0
    for name, tp in (("char_detect", char["det_tp"]), ("char_correct", char["cor_tp"])):
        p, r, f = _prf(tp, char["pred"] - tp, char["gold"] - tp)
        scores.update({f"{name}_precision": p, f"{name}_recall": r, f"{name}_f1": f})
    return scores


def _aligned(source: str, output: str) -> list[tuple[int, str]]:
    """(source position, output text there) for the positions an output changes."""
    pairs = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, source, output, autojunk=False).get_opcodes():
        if op == "replace" and i2 - i1 == j2 - j1:
            pairs.extend((i1 + k, output[j1 + k]) for k in range(i2 - i1))
        elif op != "equal":
            pairs.append((i1, output[j1:j2]))
    return pairs


def edits(source: str, output: str, in_place: bool = False) -> list[dict[str, int | str]]:
    """What a correction changed, as a client shows it: ``{position, original, corrected}`` per
    edit, left to right, ``position`` a character offset into ``source``. ``in_place`` (an MLM
    corrector: one output character per input character): one edit per changed character.
    Otherwise (a rewrite) the alignment's edits, a replaced span of equal length split into
    characters, a deletion with ``corrected`` empty, an insertion with ``original`` empty at the
    position it comes before."""
    if in_place:
        if len(source) != len(output):
            raise ValueError(f"an in-place correction keeps the length: {len(source)} -> {len(output)} characters")
        return [
            {"position": i, "original": a, "corrected": b}
            for i, (a, b) in enumerate(zip(source, output, strict=True))
            if a != b
        ]
    out: list[dict[str, int | str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, source, output, autojunk=False).get_opcodes():
        if op == "replace" and i2 - i1 == j2 - j1:
            out.extend(
                {"position": i1 + k, "original": source[i1 + k], "corrected": output[j1 + k]}
                for k in range(i2 - i1)
                if source[i1 + k] != output[j1 + k]
            )
        elif op != "equal":
            out.append({"position": i1, "original": source[i1:i2], "corrected": output[j1:j2]})
    return out
