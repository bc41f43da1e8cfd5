"""Pretraining objectives as pure batch transforms (torch in, torch out; no model, no Ray).

- :func:`whole_word_mask` — Erlangshen: Chinese whole-word masking from jieba word starts,
  15% of words, 80% [MASK] / 10% random / 10% kept; labels only on masked tokens.
- :func:`causal_lm` — Wenzhong / Yuyuan: next-token labels, padding ignored.
- :func:`span_corruption` — Randeng: T5 span corruption with sentinels, configurable noise
  density and mean span length.

Every transform takes a ``torch.Generator`` so that a batch's corruption is reproducible from
(seed, step, rank) and a resumed run masks exactly as the original would have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class MaskingIds:
    mask: int
    vocab_size: int
    never_mask: tuple[int, ...]  # [CLS], [SEP], [PAD], ...
    first_random: int = 0  # random replacements are drawn from [first_random, vocab_size)


def whole_word_mask(
    input_ids: torch.Tensor,
    word_starts: torch.Tensor,
    attention_mask: torch.Tensor,
    ids: MaskingIds,
    generator: torch.Generator,
    word_probability: float = 0.15,
    mask_ratio: float = 0.8,
    random_ratio: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input ids, labels). Shapes (B, T); labels are -100 except at masked tokens.

    A word is a token flagged as a word start plus the non-start tokens after it (jieba's
    '公交集团' -> 公 交 集 团 -> one word). Each maskable word is chosen with
    ``word_probability``; all its tokens are then masked, each replaced 80/10/10.
    """
    B, T = input_ids.shape
    maskable = attention_mask.bool() & ~torch.isin(
        input_ids, torch.tensor(ids.never_mask, device=input_ids.device)
    )
    starts = word_starts.bool() | ~maskable  # specials and padding stand alone
    word_index = torch.cumsum(starts.long(), dim=1) - 1  # (B, T): which word each token belongs to
    draw = torch.rand((B, T), generator=generator, device=input_ids.device)
    chosen_at_start = starts & maskable & (draw < word_probability)  # decided once per word
    word_chosen = _word_flags(word_index, starts, chosen_at_start)
    masked = torch.gather(word_chosen, 1, word_index) & maskable

    labels = torch.where(masked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    how = torch.rand((B, T), generator=generator, device=input_ids.device)
    to_mask = masked & (how < mask_ratio)
    to_random = masked & (how >= mask_ratio) & (how < mask_ratio + random_ratio)
    random_ids = torch.randint(
        ids.first_random, ids.vocab_size, (B, T), generator=generator, device=input_ids.device
    )
    out = torch.where(to_mask, torch.full_like(input_ids, ids.mask), input_ids)
    out = torch.where(to_random, random_ids, out)
    return out, labels


def _word_flags(
    word_index: torch.Tensor, starts: torch.Tensor, chosen_at_start: torch.Tensor
) -> torch.Tensor:
    """word_chosen[b, w] = chosen_at_start at the start token of word w of row b."""
    B, T = word_index.shape
    word_chosen = torch.zeros((B, T), dtype=torch.bool, device=word_index.device)
    rows, cols = torch.nonzero(starts, as_tuple=True)
    word_chosen[rows, word_index[rows, cols]] = chosen_at_start[rows, cols]
    return word_chosen


def causal_lm(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, labels) for a decoder: labels are the inputs (the model shifts), padding -100."""
    labels = torch.where(attention_mask.bool(), input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return input_ids, labels


def span_lengths(length: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, noise spans) for a sequence, as in T5: at least one of each."""
    num_noise = round(length * noise_density)
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(round(num_noise / mean_span), 1)
    return num_noise, num_spans


def _random_segmentation(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """``parts`` positive ints summing to ``total``, uniformly at random."""
    marks = np.zeros(total - 1, dtype=np.int64)
    marks[: parts - 1] = 1
    rng.shuffle(marks)
    segment_id = np.concatenate([[0], np.cumsum(marks)])
    return np.bincount(segment_id, minlength=parts)


def noise_mask(length: int, noise_density: float, mean_span: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean (length,) with spans of noise alternating with spans of kept tokens (T5)."""
    num_noise, num_spans = span_lengths(length, noise_density, mean_span)
    num_spans = min(num_spans, num_noise, length - num_noise)
    noise = _random_segmentation(num_noise, num_spans, rng)
    keep = _random_segmentation(length - num_noise, num_spans, rng)
    interleaved = np.stack([keep, noise], axis=1).reshape(-1)
    starts = np.cumsum(interleaved)[:-1]
    span_start = np.zeros(length, dtype=bool)
    span_start[starts] = True
    span_num = np.cumsum(span_start)
    return span_num % 2 == 1


def span_corruption(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sentinels: tuple[int, ...],
    eos_id: int,
    pad_id: int,
    generator: torch.Generator,
    noise_density: float = 0.15,
    mean_span: float = 3.0,
    drop_ids: tuple[int, ...] = (),
) -> dict[str, torch.Tensor]:
    """T5 span corruption -> ``input_ids``, ``attention_mask``, ``labels`` (pad -> -100).

    Each noise span becomes one sentinel in the input; the target lists each sentinel followed by
    the span it replaced, then ``eos``. ``drop_ids`` (e.g. the packer's [CLS]) are removed first.
    """
    if not sentinels:
        raise ValueError(
            "span corruption needs a vocabulary with <extra_id_N> sentinels (tokenizer.source: bert-chinese-sentinels)"
        )
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    inputs, targets = [], []
    drop = np.asarray(drop_ids, dtype=np.int64)
    for row, mask in zip(input_ids.cpu().numpy(), attention_mask.cpu().numpy(), strict=True):
        tokens = row[mask.astype(bool)]
        tokens = tokens[~np.isin(tokens, drop)] if len(drop) else tokens
        if len(tokens) < 2:
            inputs.append(np.append(tokens, eos_id))
            targets.append(np.asarray([eos_id]))
            continue
        noise = noise_mask(len(tokens), noise_density, mean_span, rng)
        span_starts = noise & ~np.concatenate([[False], noise[:-1]])
        num_spans = int(span_starts.sum())
        if num_spans > len(sentinels):
            raise ValueError(
                f"{num_spans} noise spans but only {len(sentinels)} sentinels; lower noise_density or raise mean_span"
            )
        sentinel_ids = np.asarray(sentinels, dtype=np.int64)
        span_index = np.cumsum(span_starts) - 1  # which span each noise token is in
        # input: kept tokens, each span collapsed into its sentinel
        inp = np.where(span_starts, sentinel_ids[np.clip(span_index, 0, None)], tokens)[~noise | span_starts]
        inputs.append(np.append(inp, eos_id))
        targets.append(np.append(_targets(tokens, noise, sentinel_ids), eos_id))
    return {
        "input_ids": _pad(inputs, pad_id),
        "attention_mask": _pad([np.ones(len(x), dtype=np.int64) for x in inputs], 0),
        "labels": _pad(targets, IGNORE_INDEX),
    }


def _targets(tokens: np.ndarray, noise: np.ndarray, sentinel_ids: np.ndarray) -> np.ndarray:
    """sentinel_0 span_0 sentinel_1 span_1 ... (only the noise tokens, each span led by its sentinel)."""
    span_starts = noise & ~np.concatenate([[False], noise[:-1]])
    span_index = np.cumsum(span_starts) - 1
    out = np.empty(int(noise.sum() + span_starts.sum()), dtype=np.int64)
    pos = np.flatnonzero(noise)
    # each noise token shifts right by the number of sentinels up to and including its span
    target_pos = np.arange(len(pos)) + span_index[pos] + 1
    out[target_pos] = tokens[pos]
    first = np.flatnonzero(span_starts[pos])  # rank among noise tokens of each span's first token
    out[first + np.arange(len(first))] = sentinel_ids[: len(first)]
    return out


def _pad(rows: list[np.ndarray], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)


def expected_span_lengths(seq_len: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """(input length, target length) a fully packed row of ``seq_len`` tokens corrupts into."""
    num_noise, num_spans = span_lengths(seq_len, noise_density, mean_span)
    return seq_len - num_noise + num_spans + 1, num_noise + num_spans + 1


# ----------------------------------------------------------------------------------------------
# BART text infilling + sentence permutation, Pegasus gap sentences
# ----------------------------------------------------------------------------------------------
def _rows(input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """The real (unpadded) tokens of each row, as int64 numpy arrays."""
    for row, mask in zip(input_ids.cpu().numpy(), attention_mask.cpu().numpy(), strict=True):
        yield row[mask.astype(bool)].astype(np.int64)


def _rng(generator: torch.Generator) -> np.random.Generator:
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))


def sentence_ids(tokens: np.ndarray, ends: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """Sentence number of each token: a sentence ends after a sentence-end token; every ``fixed``
    token ([CLS], a document end) is a sentence of its own."""
    boundary = np.zeros(len(tokens), dtype=bool)
    boundary[1:] = np.isin(tokens[:-1], ends) | fixed[:-1] | fixed[1:]
    return np.cumsum(boundary)


def permute_sentences(
    tokens: np.ndarray, ends: np.ndarray, doc_end: int | None, fixed: np.ndarray, ratio: float, rng
) -> np.ndarray:
    """BART's sentence permutation within each document of a packed row: ``ratio`` of the
    sentences (all at 1.0) trade places at random; fixed tokens ([CLS], document ends) stay put."""
    if ratio <= 0 or len(tokens) < 2:
        return tokens
    sid = sentence_ids(tokens, ends, fixed)
    n = int(sid[-1]) + 1
    order = np.arange(n, dtype=np.float64)
    k = int(np.ceil(n * ratio))
    chosen = np.sort(rng.choice(n, size=k, replace=False))
    order[chosen] = chosen[rng.permutation(k)]
    doc = np.cumsum(tokens == doc_end) - (tokens == doc_end) if doc_end is not None else np.zeros(len(tokens))
    key = order[sid]
    key[fixed & (tokens == doc_end)] = np.inf  # a document's end stays at its end
    key[fixed & (tokens != doc_end)] = -np.inf  # [CLS] stays at the start
    return tokens[np.lexsort((np.arange(len(tokens)), key, doc))]


def infill_mask(
    maskable: np.ndarray, mask_ratio: float, poisson_lambda: float, rng
) -> tuple[np.ndarray, np.ndarray]:
    """(masked, insert_before): BART text infilling's choice of spans over one row.

    Span lengths are Poisson(``poisson_lambda``), drawn until they cover ``mask_ratio`` of the
    maskable tokens (the last one trimmed). The spans are laid out at random over the maskable
    tokens without overlapping or touching, so the share masked is exactly the ratio (rounded); a
    span that meets a token which may not be masked ([SEP]) continues after it. A zero-length span
    inserts one mask token before a random unmasked position instead."""
    n = len(maskable)
    candidates = np.flatnonzero(maskable)
    m = len(candidates)
    masked, insert = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    target = round(m * mask_ratio)
    if target == 0:
        return masked, insert
    lengths = rng.poisson(poisson_lambda, size=max(8, int(2 * target / max(poisson_lambda, 0.5)) + 8))
    while lengths.sum() < target:  # rare: too many zeros drawn
        lengths = np.concatenate([lengths, rng.poisson(poisson_lambda, size=len(lengths))])
    total = np.cumsum(lengths)
    last = int(np.searchsorted(total, target))  # the span that reaches the target
    lengths = lengths[: last + 1].copy()
    lengths[-1] -= int(total[last] - target)
    zeros, lengths = int((lengths == 0).sum()), lengths[lengths > 0]
    while len(lengths) > 1 and m - target < len(lengths) - 1:  # no room to keep them apart: merge two
        lengths = np.concatenate([[lengths[0] + lengths[1]], lengths[2:]])
    k = len(lengths)
    extra = m - target - (k - 1)  # free positions once each pair of spans has one token between them
    bars = np.sort(rng.choice(extra + k, size=k, replace=False))
    gaps = np.diff(np.concatenate([[-1], bars, [extra + k]])) - 1  # k + 1 parts summing to ``extra``
    gaps[1:k] += 1
    starts = np.cumsum(gaps[:k]) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    offsets = np.arange(target) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    masked[candidates[np.repeat(starts, lengths) + offsets]] = True
    free = candidates[~masked[candidates]]
    if zeros and len(free):
        insert[rng.choice(free, size=min(zeros, len(free)), replace=False)] = True
    return masked, insert


def text_infilling(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask_id: int,
    protected: tuple[int, ...],
    sentence_ends: tuple[int, ...],
    doc_end: int | None,
    pad_id: int,
    generator: torch.Generator,
    mask_ratio: float = 0.3,
    poisson_lambda: float = 3.0,
    permute_ratio: float = 1.0,
) -> dict[str, torch.Tensor]:
    """BART denoising -> ``input_ids``, ``attention_mask``, ``labels`` (the original row; pad -100).

    First the sentences of each document are permuted (:func:`permute_sentences`), then spans are
    masked (:func:`infill_mask`): each run of masked tokens becomes one ``mask_id``. ``protected``
    tokens ([CLS], [SEP], </s>) are never masked and never move."""
    rng = _rng(generator)
    prot = np.asarray(protected, dtype=np.int64)
    ends = np.asarray(sentence_ends, dtype=np.int64)
    inputs, targets = [], []
    for tokens in _rows(input_ids, attention_mask):
        fixed = np.isin(tokens, prot)
        shuffled = permute_sentences(tokens, ends, doc_end, fixed, permute_ratio, rng)
        masked, insert = infill_mask(~fixed, mask_ratio, poisson_lambda, rng)
        run_start = masked & ~np.concatenate([[False], masked[:-1]])
        keep = ~masked | run_start
        out = np.where(run_start, mask_id, shuffled)[keep]
        where = np.cumsum(keep) - keep  # position in ``out`` of each original token
        out = np.insert(out, where[insert], mask_id)[: max(len(tokens), 1)]
        inputs.append(out)
        targets.append(tokens)
    return {
        "input_ids": _pad(inputs, pad_id),
        "attention_mask": _pad([np.ones(len(x), dtype=np.int64) for x in inputs], 0),
        "labels": _pad(targets, IGNORE_INDEX),
    }


def rouge1_against_rest(tokens: np.ndarray, sid: np.ndarray) -> np.ndarray:
    """ROUGE-1 F of each sentence against the rest of its document (token unigrams; Pegasus's
    independent "Ind-Orig" scoring), for sentences numbered 0..m-1 by ``sid``."""
    m = int(sid.max()) + 1
    _, word = np.unique(tokens, return_inverse=True)
    v = int(word.max()) + 1
    counts = np.bincount(sid * v + word, minlength=m * v).reshape(m, v)
    rest = counts.sum(0, keepdims=True) - counts
    overlap = np.minimum(counts, rest).sum(1).astype(np.float64)
    size, rest_size = counts.sum(1), rest.sum(1)
    p = np.divide(overlap, size, out=np.zeros(m), where=size > 0)
    r = np.divide(overlap, rest_size, out=np.zeros(m), where=rest_size > 0)
    return np.divide(2 * p * r, p + r, out=np.zeros(m), where=(p + r) > 0)


def gap_sentences(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sentence_mask: int,
    drop_ids: tuple[int, ...],
    sentence_ends: tuple[int, ...],
    doc_end: int,
    pad_id: int,
    eos_id: int | None = None,
    gap_ratio: float = 0.3,
) -> dict[str, torch.Tensor]:
    """Pegasus gap-sentence generation -> ``input_ids``, ``attention_mask``, ``labels``.

    Per document of a packed row (documents end at ``doc_end``; ``drop_ids`` such as [CLS] are
    removed first), each sentence is scored by :func:`rouge1_against_rest`; the top ``gap_ratio``
    of them (at least one where a document has two or more) are each replaced by ``sentence_mask``
    in the input, and the target is the picked sentences in document order, then ``eos_id``
    (default ``doc_end``).
    Deterministic: the choice depends on the text only, as in Pegasus."""
    ends = np.asarray(sentence_ends, dtype=np.int64)
    drop = np.asarray(drop_ids, dtype=np.int64)
    inputs, targets = [], []
    for tokens in _rows(input_ids, attention_mask):
        tokens = tokens[~np.isin(tokens, drop)] if len(drop) else tokens
        is_end = tokens == doc_end
        sid = sentence_ids(tokens, ends, is_end)
        doc = np.cumsum(is_end) - is_end
        gap = np.zeros(len(tokens), dtype=bool)
        for d in np.unique(doc):
            inside = (doc == d) & ~is_end
            if not inside.any():
                continue
            local = sid[inside] - sid[inside].min()
            m = int(local.max()) + 1
            if m < 2:
                continue
            scores = rouge1_against_rest(tokens[inside], local)
            k = max(1, round(m * gap_ratio))
            picked = np.zeros(m, dtype=bool)
            picked[np.argsort(-scores, kind="stable")[:k]] = True
            gap[np.flatnonzero(inside)[picked[local]]] = True
        first = gap & np.concatenate([[True], sid[1:] != sid[:-1]])
        inputs.append(np.where(first, sentence_mask, tokens)[~gap | first])
        targets.append(np.append(tokens[gap], doc_end if eos_id is None else eos_id))
    return {
        "input_ids": _pad(inputs, pad_id),
        "attention_mask": _pad([np.ones(len(x), dtype=np.int64) for x in inputs], 0),
        "labels": _pad(targets, IGNORE_INDEX),
    }
