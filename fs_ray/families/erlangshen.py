"""Erlangshen 二郎神: bidirectional encoders (BERT, MegatronBERT), 0.1B-1.3B, for understanding.

Pretrained with Chinese whole-word masking; fine-tuned with task heads or UniMC; served for
fill-mask, zero-shot, classification and tagging.
"""

from __future__ import annotations

from typing import Any

from fs_ray.families.base import Family, Preset

BERT_CHINESE_VOCAB = 21128


def bert_config(shape: dict[str, Any], seq_len: int, special: dict[str, Any]):
    from transformers import BertConfig, MegatronBertConfig

    shape = dict(shape)
    cls = MegatronBertConfig if shape.pop("architecture", "bert") == "megatron" else BertConfig
    shape.setdefault("max_position_embeddings", max(512, seq_len))
    return cls(pad_token_id=special.get("pad") or 0, **shape)


def _bert(hidden: int, layers: int, heads: int, ffn: int, **more: Any) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": ffn,
        **more,
    }


FAMILY = Family(
    name="erlangshen",
    summary="BERT-style encoder (whole-word MLM), 0.1B-1.3B: understanding",
    presets={
        "tiny": Preset(_bert(64, 2, 2, 256)),  # seconds on a laptop CPU: tests and demos
        # BERT-mini's shape (Turc et al. 2019): what 2 CPU cores pretrain in an hour
        "small": Preset(_bert(256, 4, 4, 1024)),
        "base": Preset(
            _bert(768, 12, 12, 3072, vocab_size=BERT_CHINESE_VOCAB),
            published="IDEA-CCNL/Erlangshen-Roberta-110M",
            params=102_000_000,  # its 409 MB of fp32 weights; the name's "110M" rounds up
        ),
        "large": Preset(
            _bert(1024, 24, 16, 4096, vocab_size=BERT_CHINESE_VOCAB),
            published="IDEA-CCNL/Erlangshen-Roberta-330M",
            params=330_000_000,
        ),
        "1.3b": Preset(
            _bert(2048, 24, 8, 8192, vocab_size=21248, architecture="megatron", hidden_act="gelu_new"),
            published="IDEA-CCNL/Erlangshen-MegatronBert-1.3B",
            params=1_300_000_000,
        ),
    },
    build_config=bert_config,
    objectives=("mlm",),
    methods=("head", "unimc", "unimc_zero", "tfidf", "mlm_correct", "copy", "ngram"),
    operations=("fill_mask", "zero_shot", "classify", "ner"),
    model_types=("bert", "megatron-bert", "roberta"),
)
