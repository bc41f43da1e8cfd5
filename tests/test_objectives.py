"""Pretraining objectives as pure batch transforms: whole-word masking, causal LM, span corruption."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fs_ray.objectives.masking import (
    IGNORE_INDEX,
    MaskingIds,
    causal_lm,
    expected_span_lengths,
    noise_mask,
    span_corruption,
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
