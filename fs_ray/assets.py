"""Files shipped inside the package, so the default demo and the tests need nothing outside the repo.

- ``vocab/bert_chinese_vocab.txt``: the 21,128-token Chinese BERT WordPiece vocabulary.
- ``vocab/bert_chinese_vocab_with_sentinels.txt``: the same plus ``<extra_id_0..99>`` (T5 span corruption).
- ``corpus/clue_corpus_small_sample.txt``: 2,500 CLUECorpusSmall documents, one per line.
- ``fewclue/eprstmt/``: FewCLUE's e-commerce sentiment task, five splits + few_all + test.
"""

from __future__ import annotations

import os
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"

BUILTIN_VOCABS = {
    "bert-chinese": ASSETS_DIR / "vocab" / "bert_chinese_vocab.txt",
    "bert-chinese-sentinels": ASSETS_DIR / "vocab" / "bert_chinese_vocab_with_sentinels.txt",
}

DEMO_CORPUS = ASSETS_DIR / "corpus" / "clue_corpus_small_sample.txt"


def asset_path(relative: str) -> Path:
    """Absolute path of a shipped asset, e.g. ``asset_path("fewclue/eprstmt/train_0.json")``."""
    path = ASSETS_DIR / relative
    if not path.exists():
        raise FileNotFoundError(f"no shipped asset {relative!r} under {ASSETS_DIR}")
    return path


def resolve_path(value: str) -> str:
    """Expand the ``asset://`` prefix used by shipped configs; other paths and URIs pass through."""
    if value.startswith("asset://"):
        return str(asset_path(value.removeprefix("asset://")))
    return value


def absolute(value: str) -> str:
    """:func:`resolve_path`, then a local path made absolute (workers run in folders of their own);
    URIs pass through."""
    path = resolve_path(value)
    return path if "://" in path else os.path.abspath(path)
