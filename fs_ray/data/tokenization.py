"""Fast tokenizers from a vocab name, a vocab.txt, a tokenizer.json or a Hugging Face folder,
plus jieba word boundaries aligned to tokens (what Chinese whole-word masking needs).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer

from fs_ray.assets import BUILTIN_VOCABS, resolve_path

SENTINEL_RE = re.compile(r"^<extra_id_\d+>$")


@dataclass(frozen=True)
class SpecialIds:
    """Ids the packer and the objectives need; None where the vocabulary has no such token."""

    pad: int | None
    unk: int | None
    cls: int | None
    sep: int | None
    mask: int | None
    eos: int | None
    sentinels: tuple[int, ...]

    @property
    def seq_start(self) -> int | None:
        """Token opening every packed sequence ([CLS] for BERT-style vocabularies)."""
        return self.cls

    @property
    def doc_end(self) -> int | None:
        """Token closing every document ([SEP], else </s>)."""
        return self.sep if self.sep is not None else self.eos

    def as_dict(self) -> dict:
        return {
            "pad": self.pad,
            "unk": self.unk,
            "cls": self.cls,
            "sep": self.sep,
            "mask": self.mask,
            "eos": self.eos,
            "num_sentinels": len(self.sentinels),
            "first_sentinel": self.sentinels[0] if self.sentinels else None,
            "sentinels": list(self.sentinels),  # in span order; ascending or not, per convention
        }


def _wordpiece(vocab: Path, lowercase: bool) -> Tokenizer:
    from tokenizers.implementations import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(str(vocab), lowercase=lowercase, handle_chinese_chars=True, clean_text=True)
    tokens = [line.rstrip("\n") for line in vocab.read_text(encoding="utf-8").splitlines()]
    specials = [t for t in tokens if SENTINEL_RE.match(t)]
    if specials:  # T5-style sentinels must stay single tokens
        tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
    return tok._tokenizer  # the plain tokenizers.Tokenizer underneath


def load_tokenizer(source: str, lowercase: bool = True) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` from a builtin name, vocab.txt, tokenizer.json or HF folder."""
    if source in BUILTIN_VOCABS:
        return _wordpiece(BUILTIN_VOCABS[source], lowercase)
    path = Path(resolve_path(source))
    if path.is_file() and path.suffix == ".txt":
        return _wordpiece(path, lowercase)
    if path.is_file() and path.suffix == ".json":
        return Tokenizer.from_file(str(path))
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(path / "tokenizer.json"))
        if (path / "vocab.txt").is_file():
            return _wordpiece(path / "vocab.txt", lowercase)
        # e.g. a T5/MT5 folder with only spiece.model: let transformers convert it
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), local_files_only=True).backend_tokenizer
    known = ", ".join(sorted(BUILTIN_VOCABS))
    raise FileNotFoundError(
        f"tokenizer source {source!r} is neither a builtin vocab ({known}) nor an existing vocab.txt, "
        "tokenizer.json or Hugging Face folder"
    )


def sentinel_list(special: dict) -> tuple[int, ...]:
    """The sentinel ids recorded in a manifest / task card (older ones: first + count, ascending)."""
    if special.get("sentinels") is not None:
        return tuple(int(i) for i in special["sentinels"])
    first, count = special.get("first_sentinel"), int(special.get("num_sentinels") or 0)
    return tuple(range(first, first + count)) if count and first is not None else ()


def vocab_fingerprint(tok: Tokenizer) -> str:
    """A hash of the vocabulary's contents (every token and its id, added tokens included): two
    tokenizers with the same fingerprint give the same ids the same meaning, whatever they are called."""
    import hashlib
    import json

    vocab = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: (kv[1], kv[0]))
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def released_sentinels(source: str | None, tok: Tokenizer) -> tuple[int, ...]:
    """Sentinels a released layout defines without literal tokens (a family's rule, e.g. Randeng-T5's)."""
    if not source or not Path(resolve_path(source)).is_dir():
        return ()
    from fs_ray.families import FAMILIES

    for family in FAMILIES.values():
        found = family.sentinels(str(resolve_path(source)), tok) if family.sentinels else ()
        if found:
            return tuple(found)
    return ()


def special_ids(tok: Tokenizer, source: str | None = None) -> SpecialIds:
    """The ids the packer and objectives need. Sentinels: literal ``<extra_id_N>`` tokens, else the
    convention of the released layout in ``source`` (a tokenizer/model folder), else none."""

    def first(*names: str) -> int | None:
        for name in names:
            idx = tok.token_to_id(name)
            if idx is not None:
                return idx
        return None

    vocab = tok.get_vocab(with_added_tokens=True)
    sentinels = sorted((int(t[len("<extra_id_") : -1]), i) for t, i in vocab.items() if SENTINEL_RE.match(t))
    return SpecialIds(
        pad=first("[PAD]", "<pad>"),
        unk=first("[UNK]", "<unk>"),
        cls=first("[CLS]"),
        sep=first("[SEP]"),
        mask=first("[MASK]", "<mask>"),
        eos=first("</s>", "<|endoftext|>", "<eos>"),
        sentinels=tuple(i for _, i in sentinels) or released_sentinels(source, tok),
    )


class WordSegmenter:
    """jieba word boundaries, loaded once per process (the dictionary takes ~1 s)."""

    _ready = False

    def __init__(self) -> None:
        import jieba

        if not WordSegmenter._ready:
            jieba.setLogLevel(logging.WARNING)
            jieba.initialize()
            WordSegmenter._ready = True
        self._jieba = jieba

    def word_start_chars(self, text: str) -> np.ndarray:
        """Boolean per character: True where a jieba word begins."""
        starts = np.zeros(len(text) + 1, dtype=bool)
        for _word, begin, _end in self._jieba.tokenize(text):
            starts[begin] = True
        return starts

    def token_word_starts(self, text: str, offsets: list[tuple[int, int]]) -> np.ndarray:
        """True for each token that begins a word; a token begins one if its first character does.

        Tokens inside a multi-character word ('公交集团' -> 公 交 集 团) get False and are masked
        together with the word's first token.
        """
        chars = self.word_start_chars(text)
        if not offsets:
            return np.zeros(0, dtype=bool)
        begins = np.fromiter((b for b, _ in offsets), dtype=np.int64, count=len(offsets))
        flags = chars[np.clip(begins, 0, len(text))]
        # Two tokens starting at one character (rare normaliser splits) - only the first begins a word.
        if len(begins) > 1:
            flags[1:] &= begins[1:] != begins[:-1]
        return flags
