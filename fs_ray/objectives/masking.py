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
