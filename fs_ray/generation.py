"""Generating text and scoring it the way Chinese summarisation and title generation are scored.

- :func:`generate_ids`: batched decoding (greedy, beam search, sampling) of a seq2seq model or a
  decoder, for evaluation on the Train workers and for serving; :func:`decode_text` turns ids
  back into text (no spaces between Chinese characters).

- :func:`rouge`: ROUGE-1/2/L F over characters (the LCSTS and CSL convention: no word segmenter
  between the metric and the text), Google's ``rouge-score`` (ROUGE-1.5.5 reimplemented) fed
  :func:`char_tokens`; the mean over examples, in percent.
- :func:`bleu`: corpus BLEU-4 over the same characters, sacreBLEU with its own tokenization off.
- :func:`lead_floor`: the floor every generation table is read against, as TF-IDF is for
  classification: the source's first k characters, k tuned on dev.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")

# decoding settings and their defaults (greedy); FinetuneConfig.decoding and serving requests set them
DECODING = {
    "num_beams": 1,
    "length_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "do_sample": False,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "seed": 0,
}


def left_padded(input_ids, attention_mask, pad: int):
    """Right-padded rows -> left-padded (a decoder continues from its last real token)."""
    import torch

    lengths = attention_mask.sum(1)
    width = int(lengths.max())
    ids = torch.full((input_ids.shape[0], width), pad, dtype=input_ids.dtype, device=input_ids.device)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths.tolist()):
        ids[i, width - n :] = input_ids[i, :n]
        mask[i, width - n :] = 1
    return ids, mask


def generate_ids(
    model,
    input_ids,
    attention_mask,
    *,
    decoder: bool,
    max_new_tokens: int,
    settings: dict[str, Any] | None,
    eos: int,
    pad: int,
    synced: bool = False,
    **extra: Any,
) -> list[list[int]]:
    """The new tokens of each row, up to (not including) ``eos``. ``decoder``: a causal LM that
    continues its (right-padded) prompt; otherwise a seq2seq model whose decoder starts from its
    config's ``decoder_start_token_id``. ``synced``: every rank keeps stepping until all are done
    (DeepSpeed ZeRO-3 gathers parameters collectively). Sampling is seeded by ``settings['seed']``.
    ``extra`` goes to ``model.generate`` as it is (a streamer, stopping criteria, a decoder start)."""
    import torch

    s = {**DECODING, **(settings or {})}
    if decoder:
        input_ids, attention_mask = left_padded(input_ids, attention_mask, pad)
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "num_beams": int(s["num_beams"]),
        "length_penalty": float(s["length_penalty"]),
        "no_repeat_ngram_size": int(s["no_repeat_ngram_size"]),
        "do_sample": bool(s["do_sample"]),
        "eos_token_id": eos,
        "pad_token_id": pad,
        "synced_gpus": synced,
    }
    if s["do_sample"]:
        kwargs.update(temperature=float(s["temperature"]), top_k=int(s["top_k"]), top_p=float(s["top_p"]))
    kwargs.update(extra)
    # seeded sampling without disturbing the caller's random state (a training worker's masks)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(s["seed"]))
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    new = out[:, input_ids.shape[1] :] if decoder else out[:, 1:]  # drop the prompt / decoder start
    rows = []
    for seq in new.tolist():
        rows.append(seq[: seq.index(eos)] if eos in seq else [t for t in seq if t != pad])
    return rows


_SPACED = re.compile(r"(?<=[^\x00-\x7f]) +| +(?=[^\x00-\x7f])")


def decode_text(tokenizer, ids: list[int]) -> str:
    """Text of ``ids`` (a ``tokenizers.Tokenizer``), special tokens dropped; the spaces a WordPiece
    decoder puts between Chinese characters removed (those between ASCII words kept)."""
    return _SPACED.sub("", tokenizer.decode(ids, skip_special_tokens=True)).strip()


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
