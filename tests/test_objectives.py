"""Pretraining objectives as pure batch transforms: whole-word masking, causal LM, span corruption,
BART text infilling with sentence permutation, Pegasus gap sentences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fs_ray.objectives.masking import (
    IGNORE_INDEX,
    MaskingIds,
    causal_lm,
    expected_span_lengths,
    gap_sentences,
    infill_mask,
    noise_mask,
    rouge1_against_rest,
    span_corruption,
    text_infilling,
    whole_word_mask,
)

CLS, SEP, PAD, MASK = 101, 102, 0, 103
IDS = MaskingIds(mask=MASK, vocab_size=21128, never_mask=(CLS, SEP, PAD), first_random=106)


def batch(rows=64, T=128, seed=0):
    g = np.random.default_rng(seed)
    ids = g.integers(1000, 20000, size=(rows, T))
    starts = g.random((rows, T)) < 0.55  # ~1.8 tokens per word, like jieba on news text
    ids[:, 0] = CLS
    ids[:, 50] = SEP
    starts[:, [0, 50]] = True
    attn = np.ones((rows, T), dtype=np.int64)
    attn[-1, 100:] = 0  # one padded row
    ids[-1, 100:] = PAD
    return torch.as_tensor(ids), torch.as_tensor(starts), torch.as_tensor(attn)


def words(starts_row):
    idx = np.flatnonzero(starts_row)
    return [list(range(a, b)) for a, b in zip(idx, [*idx[1:], len(starts_row)], strict=True)]


def test_whole_words_are_masked_together_and_specials_never():
    ids, starts, attn = batch()
    out, labels = whole_word_mask(ids, starts, attn, IDS, torch.Generator().manual_seed(1))
    masked = labels != IGNORE_INDEX
    chosen = total = 0
    for b in range(ids.shape[0]):
        for w in words(starts[b].numpy()):
            flags = masked[b, w]
            assert flags.all() or not flags.any(), f"row {b} word {w} partly masked"
            if ids[b, w[0]] in (CLS, SEP, PAD):
                assert not flags.any()
            else:
                total += 1
                chosen += bool(flags.all())
    assert 0.13 < chosen / total < 0.17  # 15% of words (about 7,000 words here)
    assert (labels[masked] == ids[masked]).all()
    assert (out[~masked] == ids[~masked]).all()  # nothing else touched
    share_mask = (out[masked] == MASK).float().mean().item()
    share_kept = (out[masked] == ids[masked]).float().mean().item()
    assert 0.77 < share_mask < 0.83 and 0.07 < share_kept < 0.13  # 80 / 10 random / 10 kept


def test_masking_is_reproducible_from_the_generator_seed():
    ids, starts, attn = batch(rows=8)
    a = whole_word_mask(ids, starts, attn, IDS, torch.Generator().manual_seed(7))
    b = whole_word_mask(ids, starts, attn, IDS, torch.Generator().manual_seed(7))
    c = whole_word_mask(ids, starts, attn, IDS, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_causal_lm_ignores_padding():
    ids, _, attn = batch(rows=4)
    inp, labels = causal_lm(ids, attn)
    assert torch.equal(inp, ids)
    assert (labels[-1, 100:] == IGNORE_INDEX).all() and torch.equal(labels[0], ids[0])


@pytest.mark.parametrize(("density", "mean_span"), [(0.15, 3.0), (0.3, 5.0), (0.5, 1.0)])
def test_noise_mask_has_the_configured_density_and_span_length(density, mean_span):
    rng = np.random.default_rng(0)
    m = noise_mask(512, density, mean_span, rng)
    assert abs(m.mean() - density) < 1 / 512 + 1e-9
    spans = np.sum(m & ~np.concatenate([[False], m[:-1]]))
    assert abs(m.sum() / spans - mean_span) < 0.5


def test_span_corruption_round_trips_and_uses_sentinels():
    sentinels = tuple(range(21128, 21228))
    ids, _, attn = batch(rows=16)
    out = span_corruption(
        ids,
        attn,
        sentinels,
        eos_id=SEP,
        pad_id=PAD,
        generator=torch.Generator().manual_seed(3),
        drop_ids=(CLS,),
    )
    for b in range(ids.shape[0]):
        original = [t for t, m in zip(ids[b].tolist(), attn[b].tolist(), strict=True) if m and t != CLS]
        inp = [t for t in out["input_ids"][b].tolist()][: int(out["attention_mask"][b].sum())]
        tgt = [t for t in out["labels"][b].tolist() if t != IGNORE_INDEX]
        assert inp[-1] == SEP and tgt[-1] == SEP
        # splice the targets' spans back into the sentinels of the input
        spans, current = {}, None
        for t in tgt[:-1]:
            if t in sentinels:
                current = t
                spans[current] = []
            else:
                spans[current].append(t)
        rebuilt = [x for t in inp[:-1] for x in (spans[t] if t in sentinels else [t])]
        assert rebuilt == original
        used = [t for t in inp if t in sentinels]
        assert used == list(sentinels[: len(used)])  # <extra_id_0>, <extra_id_1>, ... in order
    full_in, full_tgt = expected_span_lengths(127, 0.15, 3.0)
    assert int(out["attention_mask"][0].sum()) == full_in
    assert sum(1 for t in out["labels"][0].tolist() if t != IGNORE_INDEX) == full_tgt


def test_span_corruption_without_sentinels_is_a_clear_error():
    ids, _, attn = batch(rows=2)
    with pytest.raises(ValueError, match="bert-chinese-sentinels"):
        span_corruption(ids, attn, (), eos_id=SEP, pad_id=PAD, generator=torch.Generator())


def test_a_stale_extension_build_lock_is_cleared_and_a_fresh_one_kept(tmp_path, monkeypatch):
    """A worker killed mid-compile leaves torch's lock file behind; later runs must not wait forever."""
    import os
    import time

    from fs_ray.training.engine import clear_stale_build_lock

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    build = tmp_path / "fs_ray_lock_probe"
    build.mkdir()
    lock = build / "lock"
    lock.touch()
    assert clear_stale_build_lock("fs_ray_lock_probe") is False and lock.exists()  # a build in progress
    old = time.time() - 3600
    os.utime(lock, (old, old))
    assert clear_stale_build_lock("fs_ray_lock_probe") is True and not lock.exists()
    assert clear_stale_build_lock("fs_ray_lock_probe") is False


def test_a_waiting_run_gets_past_a_lock_that_goes_stale_while_it_waits(tmp_path, monkeypatch):
    import os
    import threading
    import time

    from torch.utils.file_baton import FileBaton

    import fs_ray.training.engine as training

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(training.clear_stale_build_lock, "__defaults__", (1.0,))
    build = tmp_path / "fs_ray_lock_probe"
    build.mkdir()
    (build / "lock").touch()  # a compile that was killed a moment ago
    stop = threading.Event()
    watcher = threading.Thread(target=training._watch_build_lock, args=("fs_ray_lock_probe", stop, 0.2), daemon=True)
    watcher.start()
    start = time.monotonic()
    FileBaton(os.path.join(build, "lock"), wait_seconds=0.05).wait()  # what torch's loader blocks in
    stop.set()
    assert 0.8 < time.monotonic() - start < 30


# ---- BART -------------------------------------------------------------------------------------
STOP, BANG = 511, 8013  # 。 and ！ in the Chinese BERT vocabulary
ENDS = (STOP, BANG)


def documents(rows=32, seed=0, docs=3):
    """Packed rows [CLS] d1 [SEP] d2 [SEP] d3: sentences of 2-9 tokens ending in 。 or ！; the last
    document runs to the end of the row without a [SEP] (as a fixed-length cut leaves it)."""
    g = np.random.default_rng(seed)
    out = []
    for _ in range(rows):
        row = [CLS]
        for d in range(docs):
            for _ in range(int(g.integers(1, 6))):
                row += [*g.integers(1000, 20000, size=int(g.integers(1, 9))).tolist(), int(g.choice(ENDS))]
            if d < docs - 1:
                row.append(SEP)
        out.append(row)
    width = max(map(len, out))
    ids = torch.full((rows, width), PAD)
    attn = torch.zeros((rows, width), dtype=torch.long)
    for i, r in enumerate(out):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
    return ids, attn


def bart(ids, attn, seed=0, **rates):
    return text_infilling(
        ids, attn, MASK, (CLS, SEP, PAD), ENDS, SEP, PAD, torch.Generator().manual_seed(seed), **rates
    )


def real(ids, attn, b):
    return [t for t, m in zip(ids[b].tolist(), attn[b].tolist(), strict=True) if m]


def sentences(row):
    """[[doc 1's sentences], [doc 2's], ...] of a packed row (tuples, each ending in 。/！ or the doc)."""
    docs, doc, cur = [], [], []
    for t in row[1:]:
        if t == SEP:
            docs.append(doc + ([tuple(cur)] if cur else []))
            doc, cur = [], []
            continue
        cur.append(t)
        if t in ENDS:
            doc.append(tuple(cur))
            cur = []
    docs.append(doc + ([tuple(cur)] if cur else []))
    return docs


@pytest.mark.parametrize(("ratio", "lam"), [(0.3, 3.0), (0.15, 2.0)])
def test_infill_spans_cover_the_configured_share_and_skip_protected_tokens(ratio, lam):
    rng = np.random.default_rng(0)
    spans, inserts = [], 0
    for _ in range(200):
        maskable = np.ones(256, dtype=bool)
        maskable[[0, 80, 170]] = False  # [CLS] and two document ends
        masked, insert = infill_mask(maskable, ratio, lam, rng)
        assert not (masked & ~maskable).any() and not (insert & masked).any()
        assert masked.sum() == round(maskable.sum() * ratio)  # exactly the share: spans never overlap
        inserts += insert.sum()
        starts = masked & ~np.concatenate([[False], masked[:-1]])
        ends = masked & ~np.concatenate([masked[1:], [False]])
        spans += (np.flatnonzero(ends) - np.flatnonzero(starts) + 1).tolist()
    # runs are the drawn Poisson lengths (mean lam / (1 - e^-lam) without the zeros), a few cut by [SEP]
    assert lam * 0.9 < np.mean(spans) < lam / (1 - np.exp(-lam)) + 0.2
    # zero-length spans (Poisson P(0) = e^-lam of the spans) insert a mask instead
    assert inserts > 0.4 * np.exp(-lam) * len(spans)


def test_text_infilling_collapses_each_span_into_one_mask_and_targets_the_original():
    ids, attn = documents()
    out = bart(ids, attn, permute_ratio=0.0)
    masks = 0
    for b in range(ids.shape[0]):
        original = real(ids, attn, b)
        inp = out["input_ids"][b, : int(out["attention_mask"][b].sum())].tolist()
        assert [t for t in out["labels"][b].tolist() if t != IGNORE_INDEX] == original
        # every mask stands for a run of zero or more original tokens; the rest is the original
        import re

        pattern = "".join(r"(?:\d+,)*?" if t == MASK else f"{t}," for t in inp)
        assert re.fullmatch(pattern, "".join(f"{t}," for t in original)), b
        assert [t for t in inp if t in (CLS, SEP)] == [t for t in original if t in (CLS, SEP)]
        masks += inp.count(MASK)
        assert len(inp) < len(original)
    assert masks > ids.shape[0]


def test_sentence_permutation_shuffles_within_each_document_only():
    ids, attn = documents()
    out = bart(ids, attn, mask_ratio=0.0, permute_ratio=1.0)
    moved = 0
    for b in range(ids.shape[0]):
        original = real(ids, attn, b)
        inp = out["input_ids"][b, : int(out["attention_mask"][b].sum())].tolist()
        assert inp[0] == CLS and [i for i, t in enumerate(inp) if t == SEP] == [
            i for i, t in enumerate(original) if t == SEP
        ]
        before, after = sentences(original), sentences(inp)
        assert [sorted(d) for d in after] == [sorted(d) for d in before]  # same sentences, same documents
        moved += after != before
    assert moved > ids.shape[0] // 2


def test_bart_noise_is_reproducible_from_the_generator_seed():
    ids, attn = documents(rows=8)
    a, b, c = bart(ids, attn, seed=5), bart(ids, attn, seed=5), bart(ids, attn, seed=6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input_ids"], c["input_ids"])


# ---- Pegasus ----------------------------------------------------------------------------------
def test_rouge1_against_the_rest_matches_a_hand_computed_case():
    # s0 = 1 2 3, s1 = 1 2, s2 = 4
    tokens = np.array([1, 2, 3, 1, 2, 4])
    sid = np.array([0, 0, 0, 1, 1, 2])
    # s0 vs 1 2 4: overlap 2, P 2/3, R 2/3; s1 vs 1 2 3 4: overlap 2, P 1, R 1/2 -> F 2/3; s2: none
    assert rouge1_against_rest(tokens, sid) == pytest.approx([2 / 3, 2 / 3, 0.0])


GAP, EOS = 7, 8


def test_gap_sentences_mask_the_most_central_sentences_and_target_them_in_order():
    a, b, c, d = [1, 2, 3, STOP], [1, 2, BANG], [9, 9, 9, 9, STOP], [3, 2, 1, STOP]
    e, f = [4, 5, STOP], [4, 5, 6, STOP]
    lone = [6, 6, STOP]
    row = [CLS, *a, *b, *c, *d, SEP, *e, *f, SEP, *lone, SEP]
    ids = torch.tensor([row])
    out = gap_sentences(ids, torch.ones_like(ids), GAP, (CLS,), ENDS, SEP, PAD, eos_id=EOS, gap_ratio=0.3)
    # doc 1: 4 sentences -> round(1.2) = 1 gap: a and d tie (4 shared tokens); the first wins.
    # doc 2: 2 sentences -> 1 gap; e and f tie, e first. A one-sentence document keeps its text.
    assert out["input_ids"][0].tolist() == [GAP, *b, *c, *d, SEP, GAP, *f, SEP, *lone, SEP]
    assert out["labels"][0].tolist() == [*a, *e, EOS]
    out = gap_sentences(ids, torch.ones_like(ids), GAP, (CLS,), ENDS, SEP, PAD, eos_id=EOS, gap_ratio=0.5)
    # half of 4 sentences: a and d go, each behind its own mask
    assert out["input_ids"][0].tolist() == [GAP, *b, *c, GAP, SEP, GAP, *f, SEP, *lone, SEP]
    assert out["labels"][0].tolist() == [*a, *d, *e, EOS]


def test_gap_sentences_rate_and_round_trip_on_many_documents():
    ids, attn = documents(rows=32, seed=1)
    out = gap_sentences(ids, attn, GAP, (CLS,), ENDS, SEP, PAD, eos_id=EOS, gap_ratio=0.3)
    picked = total = 0
    for b in range(ids.shape[0]):
        original = real(ids, attn, b)[1:]
        inp = out["input_ids"][b, : int(out["attention_mask"][b].sum())].tolist()
        tgt = [t for t in out["labels"][b].tolist() if t != IGNORE_INDEX]
        assert tgt[-1] == EOS
        # filling each gap with the next target sentence rebuilds the original
        gaps = [s for doc in sentences([CLS, *tgt[:-1]]) for s in doc]
        rebuilt = [x for t in inp for x in (gaps.pop(0) if t == GAP else (t,))]
        assert rebuilt == original and not gaps
        for doc in sentences([CLS, *original]):
            total += len(doc) if len(doc) > 1 else 0
        picked += inp.count(GAP)
    assert 0.25 < picked / total < 0.45
