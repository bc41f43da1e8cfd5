"""Seeded noise for correction pretraining: (noisy, clean) token sequences from clean text.

Substitutions come from character confusion sets (same sound, similar shape: pycorrector's lists,
shipped in ``fs_ray/assets/confusion``), as the errors of SIGHAN-style data do; deletions,
duplicating insertions and adjacent swaps are optional. Everything works on token ids of one
vocabulary: :func:`confusion_table` turns the character sets into id tables once per tokenizer,
and :func:`add_noise` uses a numpy generator, so the same seed gives the same noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fs_ray.assets import ASSETS_DIR

CONFUSION_DIR = ASSETS_DIR / "confusion"


def read_same_pinyin(path: Path) -> dict[str, list[str]]:
    """``char \\t same-sound-same-tone chars \\t same-sound-other-tone chars`` -> char: candidates
    (same tone first)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, *groups = line.split("\t")
        key = key.strip()
        if len(key) != 1:
            continue
        seen = dict.fromkeys(c for g in groups for c in g.strip() if c != key and not c.isspace())
        if seen:
            out[key] = list(seen)
    return out


def read_same_stroke(path: Path) -> dict[str, list[str]]:
    """One group of similar-shape characters per line (tab-separated) -> char: the others of
    every group it is in."""
    out: dict[str, dict[str, None]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        group = [c.strip() for c in line.split("\t") if len(c.strip()) == 1]
        for c in group:
            out.setdefault(c, {}).update(dict.fromkeys(o for o in group if o != c))
    return {c: list(others) for c, others in out.items() if others}


@dataclass(frozen=True)
class ConfusionTable:
    """Per token id, the ids of the characters it is confused with (-1 padded), by kind."""

    sound: np.ndarray  # (V, Ks) int64
    shape: np.ndarray  # (V, Kh) int64

    @property
    def covered(self) -> int:
        """How many ids have at least one candidate of either kind."""
        return int(((self.sound[:, 0] >= 0) | (self.shape[:, 0] >= 0)).sum())


def _table(vocab: dict[str, int], size: int, sets: dict[str, list[str]]) -> np.ndarray:
    rows = {}
    for char, others in sets.items():
        if char in vocab:
            ids = [vocab[o] for o in others if o in vocab]
            if ids:
                rows[vocab[char]] = ids
    width = max((len(v) for v in rows.values()), default=1)
    out = np.full((size, width), -1, dtype=np.int64)
    for i, ids in rows.items():
        out[i, : len(ids)] = ids
    return out


def confusion_table(tokenizer, directory: Path = CONFUSION_DIR) -> ConfusionTable:
    """The confusion sets in ``tokenizer``'s ids: only characters that are whole tokens count."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1
    return ConfusionTable(
        sound=_table(vocab, size, read_same_pinyin(directory / "same_pinyin.txt")),
        shape=_table(vocab, size, read_same_stroke(directory / "same_stroke.txt")),
    )


def _pick(table: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly drawn candidate per id (-1 where it has none)."""
    cand = table[ids]
    counts = (cand >= 0).sum(axis=1)
    choice = np.floor(rng.random(len(ids)) * np.maximum(counts, 1)).astype(np.int64)
    return np.where(counts > 0, cand[np.arange(len(ids)), choice], -1)


def add_noise(
    ids: np.ndarray,
    table: ConfusionTable,
    rng: np.random.Generator,
    substitute_ratio: float = 0.05,
    sound_ratio: float = 0.7,
    delete_ratio: float = 0.0,
    insert_ratio: float = 0.0,
    swap_ratio: float = 0.0,
    keep: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(noisy ids, substituted) for one clean sequence ``ids``.

    Each token with a confusion candidate is replaced with probability ``substitute_ratio`` by
    one drawn from its same-sound set (probability ``sound_ratio``) or its similar-shape set (the
    other kind when one is empty). Then each token is deleted with ``delete_ratio``, doubled with
    ``insert_ratio`` (a repeated character, the commonest insertion typo) and swapped with the
    next with ``swap_ratio``. ``keep`` (bool, optional) marks tokens never touched (specials).
    ``substituted`` is a bool mask over the *clean* positions that were replaced."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    keep = np.zeros(n, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    sound, shape = _pick(table.sound, ids, rng), _pick(table.shape, ids, rng)
    prefer_sound = rng.random(n) < sound_ratio
    first, second = np.where(prefer_sound, sound, shape), np.where(prefer_sound, shape, sound)
    replacement = np.where(first >= 0, first, second)
    substituted = (rng.random(n) < substitute_ratio) & (replacement >= 0) & ~keep
    noisy = np.where(substituted, replacement, ids)
    if delete_ratio or insert_ratio:
        delete = (rng.random(n) < delete_ratio) & ~keep
        insert = (rng.random(n) < insert_ratio) & ~keep & ~delete
        repeats = np.where(delete, 0, np.where(insert, 2, 1))
        noisy, keep = np.repeat(noisy, repeats), np.repeat(keep, repeats)
    if swap_ratio and len(noisy) > 1:
        swap = np.flatnonzero((rng.random(len(noisy) - 1) < swap_ratio) & ~keep[:-1] & ~keep[1:])
        swap = swap[np.concatenate([[True], np.diff(swap) > 1])] if len(swap) else swap  # no overlaps
        noisy = noisy.copy()
        noisy[swap], noisy[swap + 1] = noisy[swap + 1], noisy[swap].copy()
    return noisy, substituted
