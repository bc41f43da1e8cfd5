"""The prepared-corpus format, stated once: what ``jobs/prepare.py`` writes and training reads.

::

    <prepared dir>/
        manifest.json        format, tokenizer (source, vocab size, special ids), seq_len, pack
                             mode, the shards with their rows/tokens/row groups, totals, drops
        tokenizer.json       the tokenizer the shards were encoded with
        config.yaml          the resolved PrepareConfig
        shards/*.parquet     ``input_ids`` (uint16/uint32 lists), ``n_tokens``, ``word_starts``
                             (jieba word starts, when kept), row groups of ROW_GROUP_ROWS rows

The manifest is written last, so a folder without one is a preparation that did not finish.
"""

from __future__ import annotations

import json
from typing import Any

from fs_ray import storage

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "fs_ray.prepared/1"
SHARDS_SUBDIR = "shards"
TOKENIZER_FILE = "tokenizer.json"
ROW_GROUP_ROWS = 256  # the unit of shuffling and of mid-epoch resume in fs_ray.data.ingest


class CorpusError(RuntimeError):
    """A prepared folder that cannot be trained on (no manifest, wrong format, ...)."""


def read_manifest(root: str) -> dict[str, Any]:
    """The manifest of a prepared folder (local or URI), checked to be one fs_ray can read."""
    path = storage.join(root, MANIFEST_NAME)
    if not storage.exists(path):
        raise CorpusError(
            f"{root} has no {MANIFEST_NAME}: it is not a prepared corpus, or its preparation did not finish "
            "(run jobs/prepare.py)"
        )
    manifest = json.loads(storage.read_text(path))
    if manifest.get("format") != MANIFEST_FORMAT:
        raise CorpusError(f"{path}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    return manifest
