"""Fast tokenizers from a vocab name, a vocab.txt, a tokenizer.json or a Hugging Face folder,
plus jieba word boundaries aligned to tokens (what Chinese whole-word masking needs).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, pre_tokenizers

from fs_ray.assets import BUILTIN_VOCABS, resolve_path

SENTINEL_RE = re.compile(r"^<extra_id_\d+>$")
# Chinese sentence ends and their ASCII forms: where BART permutes and Pegasus picks gap sentences
SENTENCE_END_CHARS = ("。", "！", "？", "!", "?")


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
    sentence_ends: tuple[int, ...] = ()  # 。！？!? as single tokens (BART permutation, Pegasus gaps)
    sentence_mask: int | None = None  # Pegasus's <mask_1>: one gap sentence in the input

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
            "sentence_ends": list(self.sentence_ends),
            "sentence_mask": self.sentence_mask,
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
    from fs_ray.families import FAMILIES

    if source in BUILTIN_VOCABS:
        return _wordpiece(BUILTIN_VOCABS[source], lowercase)
    for family in FAMILIES.values():  # tokenizers a family brings (e.g. pegasus-chinese)
        if source in family.tokenizers:
            return family.tokenizers[source]()
    path = Path(resolve_path(source))
    if path.is_file() and path.suffix == ".txt":
        return _wordpiece(path, lowercase)
    if path.is_file() and path.suffix == ".json":
        return tokenizer_from_json(path.read_text(encoding="utf-8"))
    if path.is_dir():
        for family in FAMILIES.values():  # a released layout read its own way (Randeng-Pegasus's vocab.txt)
            tok = family.folder_tokenizer(str(path)) if family.folder_tokenizer else None
            if tok is not None:
                return tok
        if (path / "tokenizer.json").is_file():
            return tokenizer_from_json((path / "tokenizer.json").read_text(encoding="utf-8"))
        if (path / "vocab.txt").is_file():
            return _wordpiece(path / "vocab.txt", lowercase)
        # e.g. a T5/MT5 folder with only spiece.model: let transformers convert it
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), local_files_only=True).backend_tokenizer
    known = ", ".join(sorted([*BUILTIN_VOCABS, *(n for f in FAMILIES.values() for n in f.tokenizers)]))
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
    # A vocabulary with Pegasus's <mask_1> follows Pegasus: nothing opens a sequence and </s> ends a
    # document, although Randeng-Pegasus's BERT-derived vocab.txt still lists [CLS] and [SEP].
    pegasus = first("<mask_1>") is not None and first("</s>") is not None
    sentinels = sorted((int(t[len("<extra_id_") : -1]), i) for t, i in vocab.items() if SENTINEL_RE.match(t))
    return SpecialIds(
        pad=first("[PAD]", "<pad>"),
        unk=first("[UNK]", "<unk>"),
        cls=None if pegasus else first("[CLS]"),
        sep=None if pegasus else first("[SEP]"),
        mask=first("[MASK]", "<mask>"),
        # <|endoftext|> first: a vocabulary that adds it to SentencePiece pieces (Bigan's) ends with it
        eos=first("<|endoftext|>", "</s>", "<eos>"),
        sentinels=tuple(i for _, i in sentinels) or released_sentinels(source, tok),
        sentence_ends=tuple(sorted({i for c in SENTENCE_END_CHARS if (i := tok.token_to_id(c)) is not None})),
        sentence_mask=first("<mask_1>"),
    )


# ----------------------------------------------------------------------------------------------
# jieba words first: the Pegasus-Chinese tokenization
# ----------------------------------------------------------------------------------------------
JIEBA_MARKER = "<fs_ray:jieba-words>"  # first step of the pre-tokenizer a saved jieba-word tokenizer carries
_CJK = (
    "\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002b73f"
    "\U0002b740-\U0002b81f\U0002b820-\U0002ceaf\U0002f800-\U0002fa1f"
)


def _bert_punct(ch: str) -> bool:
    """BERT's punctuation: ASCII symbols and every Unicode P* category."""
    import unicodedata

    o = ord(ch)
    return (
        33 <= o <= 47
        or 58 <= o <= 64
        or 91 <= o <= 96
        or 123 <= o <= 126
        or unicodedata.category(ch).startswith("P")
    )


_SINGLE = re.compile(f"[{_CJK}]")


def basic_pieces(text: str) -> list[tuple[int, int]]:
    """(start, end) of the pieces BERT's basic tokenizer cuts ``text`` into: whitespace and control
    characters dropped, each CJK character and each punctuation mark alone, other runs kept."""
    import unicodedata

    out, start = [], None
    for i, ch in enumerate(text):
        cat = unicodedata.category(ch)
        gap = ch.isspace() or ord(ch) in (0, 0xFFFD) or (cat.startswith("C") and ch not in "\t\n\r")
        alone = not gap and (_SINGLE.match(ch) is not None or _bert_punct(ch))
        if gap or alone:
            if start is not None:
                out.append((start, i))
                start = None
            if alone:
                out.append((i, i + 1))
        elif start is None:
            start = i
    if start is not None:
        out.append((start, len(text)))
    return out


class JiebaWords:
    """Pre-tokenizer of Randeng-Pegasus (FengShen's ``PegasusTokenizer``): the lowercased text is cut
    into jieba words (accurate mode, no HMM); a word in the vocabulary stays whole (WordPiece then
    maps it to its one id); any other word is cut as BERT's basic tokenizer would (CJK characters
    and punctuation alone, accents stripped) and its pieces go through WordPiece."""

    def __init__(self, vocab) -> None:
        WordSegmenter()  # loads jieba's dictionary once
        import jieba

        self._jieba = jieba
        self.vocab = frozenset(vocab)

    def _split(self, _i, text):
        out = []
        for word, begin, end in self._jieba.tokenize(str(text), HMM=False):
            if word in self.vocab:
                out.append(text[begin:end])
                continue
            for b, e in basic_pieces(word):
                piece = text[begin + b : begin + e]
                piece.nfd()
                piece.filter(lambda c: not _is_mark(c))
                if len(piece.normalized):
                    out.append(piece)
        return out

    def pre_tokenize(self, pretok) -> None:
        pretok.split(self._split)


def _is_mark(ch: str) -> bool:
    import unicodedata

    return unicodedata.category(ch) == "Mn"


def _saved_pre_tokenizer():
    """What a jieba-word tokenizer saves instead of its Python pre-tokenizer: the marker, then a
    character-level fallback (CJK characters and punctuation alone) for readers that are not fs_ray."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(JIEBA_MARKER, "isolated"),
            pre_tokenizers.Split(Regex(f"[{_CJK}]"), "isolated"),
            pre_tokenizers.BertPreTokenizer(),
        ]
    )


def with_jieba_words(tok: Tokenizer) -> Tokenizer:
    """``tok`` with the :class:`JiebaWords` pre-tokenizer over its own vocabulary."""
    tok.pre_tokenizer = pre_tokenizers.PreTokenizer.custom(JiebaWords(tok.get_vocab(with_added_tokens=False)))
    return tok


def tokenizer_json(tok: Tokenizer) -> str:
    """``tok.to_str()``; a jieba-word tokenizer (a Python pre-tokenizer, which the tokenizers library
    cannot save) is saved with :func:`_saved_pre_tokenizer` and comes back whole through
    :func:`tokenizer_from_json`."""
    try:
        return tok.to_str()
    except Exception:
        custom = tok.pre_tokenizer
        tok.pre_tokenizer = _saved_pre_tokenizer()
        try:
            return tok.to_str()
        finally:
            tok.pre_tokenizer = custom


def tokenizer_from_json(text: str) -> Tokenizer:
    """A tokenizer from its JSON, its jieba-word pre-tokenizer restored where it had one."""
    tok = Tokenizer.from_str(text)
    return with_jieba_words(tok) if JIEBA_MARKER in json.dumps(json.loads(text).get("pre_tokenizer")) else tok


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
