"""Bigan 比干: a decoder-only Transformer-XL (relative attention, segment memory) that corrects
Chinese text by rewriting it: ``“{noisy}”改写后是“`` and the model writes the clean text and ``”``.

The network is fs_ray's own (:mod:`fs_ray.models.bigan`) with FengShen's module names and config
fields, so the released Bigan-Transformer-XL-denoise-1.1B folder (``model_type:
transfo_xl_denoise``, ``architectures: [TransfoXLDenoiseModel]``, a SentencePiece ``spiece.model``
read by FengShen's ``TransfoXLDenoiseTokenizer``) loads as it is published.
"""

from __future__ import annotations

import json
import os
from typing import Any

from fs_ray.families.base import Family, Preset, doc_end

RELEASED_VOCAB = 50048  # 50,000 SentencePiece pieces, <|endoftext|> at 50000, padded to 50,048
END_OF_TEXT = "<|endoftext|>"  # FengShen's unk, bos and eos token, added after the pieces


def transfo_xl_config(shape: dict[str, Any], seq_len: int, special: dict[str, Any]):
    from fs_ray.models.bigan import TransfoXLDenoiseConfig

    shape = dict(shape)
    shape["max_sequence_length"] = max(int(shape.get("max_sequence_length", 512)), seq_len)
    return TransfoXLDenoiseConfig(
        pad_token_id=special.get("pad"),
        bos_token_id=special.get("cls"),
        eos_token_id=doc_end(special),
        **shape,
    )


def _xl(hidden: int, layers: int, heads: int, **more: Any) -> dict[str, Any]:
    return {"hidden_size": hidden, "num_layers": layers, "num_attention_heads": heads, **more}


def folder_tokenizer(folder: str):
    """A released Bigan folder's tokenizer: its ``spiece.model`` as FengShen's
    ``TransfoXLDenoiseTokenizer`` reads it (SentencePiece pieces, then ``<|endoftext|>``), which
    transformers cannot load by that class name; None for any other folder."""
    spiece = os.path.join(folder, "spiece.model")
    if not os.path.isfile(spiece):
        return None
    names = []
    for name, key in (("config.json", "model_type"), ("tokenizer_config.json", "tokenizer_class")):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                names.append(str(json.load(f).get(key) or ""))
    if "transfo_xl_denoise" not in names and "TransfoXLDenoiseTokenizer" not in names:
        return None
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    with open(spiece, "rb") as f:
        proto.ParseFromString(f.read())
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, [(p.piece, p.score) for p in proto.pieces])
    tok.add_special_tokens([AddedToken(END_OF_TEXT, special=True)])
    return tok


FAMILY = Family(
    name="bigan",
    summary="Transformer-XL decoder (relative attention, segment memory), 1.1B: correction by rewriting",
    presets={
        "tiny": Preset(_xl(64, 2, 2)),
        "small": Preset(_xl(256, 8, 4)),  # the CPU tables' shape, as Wenzhong small
        "1.1b": Preset(
            _xl(1600, 32, 25, vocab_size=RELEASED_VOCAB),
            published="IDEA-CCNL/Bigan-Transformer-XL-denoise-1.1B",
            params=1_100_000_000,  # 1.146B counted; the name rounds down
        ),
    },
    build_config=transfo_xl_config,
    objectives=("denoise", "clm"),
    methods=("clm", "lead", "copy", "ngram"),
    operations=("generate", "correct"),
    model_types=("transfo_xl_denoise",),
    folder_tokenizer=folder_tokenizer,
    architecture_kinds={"TransfoXLDenoiseModel": "clm"},
)
