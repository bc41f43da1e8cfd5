"""Scoring generated text the way Chinese summarisation and title generation are scored.

- :func:`rouge`: ROUGE-1/2/L F over characters (the LCSTS and CSL convention: no word segmenter
  between the metric and the text), Google's ``rouge-score`` (ROUGE-1.5.5 reimplemented) fed
  :func:`char_tokens`; the mean over examples, in percent.
- :func:`bleu`: corpus BLEU-4 over the same characters, sacreBLEU with its own tokenization off.
- :func:`lead_floor`: the floor every generation table is read against, as TF-IDF is for
  classification: the source's first k characters, k tuned on dev.
"""

from __future__ import annotations

from collections.abc import Sequence

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def char_tokens(text: str) -> list[str]:
    """Lowercased characters, whitespace dropped: the unit of every score here."""
    return [c for c in text.lower() if not c.isspace()]


class _Chars:
    """The tokenizer interface rouge-score takes (``tokenize(text) -> list[str]``)."""

    def tokenize(self, text: str) -> list[str]:
        return char_tokens(text)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean character ROUGE-1/2/L F-measure (percent) of each prediction against its reference."""
    from rouge_score.rouge_scorer import RougeScorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        return dict.fromkeys(ROUGE_KEYS, 0.0)
    scorer = RougeScorer(list(ROUGE_KEYS), tokenizer=_Chars())
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        for key, score in scorer.score(ref, pred).items():
            totals[key] += score.fmeasure
    return {k: 100 * v / len(references) for k, v in totals.items()}


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (percent) over characters, sacreBLEU's standard brevity penalty and no smoothing."""
    import sacrebleu

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        return 0.0
    hyp = [" ".join(char_tokens(p)) for p in predictions]
    ref = [" ".join(char_tokens(r)) for r in references]
    return float(sacrebleu.corpus_bleu(hyp, [ref], tokenize="none", smooth_method="none", force=True).score)


def generation_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L and BLEU-4 of a prediction list, rounded for tables."""
    scores = {**rouge(predictions, references), "bleu4": bleu(predictions, references)}
    return {k: round(v, 4) for k, v in scores.items()}


def lead(source: str, k: int) -> str:
    """The first ``k`` non-space characters of ``source``."""
    return "".join(char_tokens(source)[:k]) if k > 0 else ""


def lead_floor(
    dev_sources: Sequence[str],
    dev_targets: Sequence[str],
    candidates: Sequence[int] | None = None,
) -> tuple[int, dict[str, float]]:
    """(k, dev scores) of the lead baseline whose k (characters) gives the best dev ROUGE-L.

    Candidates default to every length from 1 to twice the longest dev target (capped at 200).
    """
    if not dev_sources:
        raise ValueError("the lead floor needs dev examples to tune k on")
    if candidates is None:
        longest = max(len(char_tokens(t)) for t in dev_targets)
        candidates = range(1, min(2 * longest, 200) + 1)
    best_k, best = 0, {"rougeL": -1.0}
    for k in candidates:
        scores = rouge([lead(s, k) for s in dev_sources], dev_targets)
        if scores["rougeL"] > best["rougeL"]:
            best_k, best = k, scores
    return best_k, generation_scores([lead(s, best_k) for s in dev_sources], dev_targets)
