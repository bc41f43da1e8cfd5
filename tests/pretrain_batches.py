"""Real pretraining batches without Ray: the shipped demo corpus tokenized, packed and collated
exactly as jobs/prepare.py and the worker stream do, for family and objective tests."""

from __future__ import annotations

import numpy as np

from fs_ray.assets import DEMO_CORPUS
from fs_ray.config import load_config
from fs_ray.data.corpus import tokenize_and_pack
from fs_ray.data.ingest import collate
from fs_ray.data.tokenization import load_tokenizer, special_ids
from fs_ray.run_configs import PrepareConfig


def demo_batches(tokenizer: str, rows: int = 8, seq_len: int = 64, docs: int = 40) -> tuple[list[dict], dict, int]:
    """(batches of 4 rows, special ids, vocab size) from the first ``docs`` lines of the demo corpus."""
    cfg = load_config(PrepareConfig, None, [f"tokenizer.source={tokenizer}", f"pack.seq_len={seq_len}"])
    texts = [t for t in DEMO_CORPUS.read_text(encoding="utf-8").splitlines() if t.strip()][:docs]
    table, _ = tokenize_and_pack(texts, cfg)
    table = table.slice(0, rows)
    data = {k: table[k].to_numpy(zero_copy_only=False) for k in table.column_names}
    data["sample_id"] = np.arange(len(table))
    tok = load_tokenizer(tokenizer)
    special = special_ids(tok, tokenizer).as_dict()
    batches = [
        collate({k: v[i : i + 4] for k, v in data.items()}, seq_len=seq_len, pad_id=special["pad"] or 0)
        for i in range(0, len(table), 4)
    ]
    return batches, special, tok.get_vocab_size(with_added_tokens=True)
