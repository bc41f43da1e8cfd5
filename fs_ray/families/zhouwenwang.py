"""Zhouwenwang 周文王: one RoFormer encoder (rotary positions) that both understands and generates.

Pretrained with the ``unified`` objective (whole-word MLM with a bidirectional mask and causal LM
with a causal mask over the same weights); fine-tuned with the encoder methods (task heads,
UniMC) and with ``clm`` for generation; served for fill-mask, classification and generation.
The network is fs_ray's own (:mod:`fs_ray.models.zhouwenwang`, FengShen's module names); the
released Zhouwenwang-Unified-110M / -1.3B folders (``model_type: megatron-bert``, FengShen's
RoFormer weights) are recognised by their weights and loaded into it.
"""

from __future__ import annotations

from typing import Any

from fs_ray.families.base import Family, Preset, doc_end

# The released vocab.txt is 53.5 kB: RoFormer's 12,000-token character vocabulary.
RELEASED_VOCAB = 12000


def roformer_config(shape: dict[str, Any], seq_len: int, special: dict[str, Any]):
    from fs_ray.models.zhouwenwang import ZhouwenwangConfig

    shape = dict(shape)
    shape["max_position_embeddings"] = max(int(shape.get("max_position_embeddings", 512)), seq_len)
    return ZhouwenwangConfig(
        pad_token_id=special.get("pad") or 0,
        bos_token_id=special.get("cls"),
        eos_token_id=doc_end(special),
        **shape,
    )


def _roformer(hidden: int, layers: int, heads: int, ffn: int, **more: Any) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": ffn,
        **more,
    }


def _released_layout(folder: str) -> bool:
    from fs_ray.models.zhouwenwang import released_layout

    return released_layout(folder)


def _load_released(folder: str, auto_class: str, **kwargs: Any):
    from fs_ray.models.zhouwenwang import load_released

    return load_released(folder, auto_class, **kwargs)


FAMILY = Family(
    name="zhouwenwang",
    summary="RoFormer encoder, unified MLM + causal LM on one set of weights, 110M-1.3B: understanding and generation",
    presets={
        "tiny": Preset(_roformer(64, 2, 2, 256)),
        "small": Preset(_roformer(256, 4, 4, 1024)),  # the CPU tables' shape, as Erlangshen small
        "110m": Preset(
            _roformer(768, 12, 12, 3072, vocab_size=RELEASED_VOCAB),
            published="IDEA-CCNL/Zhouwenwang-Unified-110M",
            # its pytorch_model.bin is 189 MB of fp16: 94.6M parameters; the name rounds up
            params=94_500_000,
        ),
        "1.3b": Preset(
            # Megatron's 1.3B shape (2048 wide, 24 layers); the head count is not in any source we
            # could read and does not change the count
            _roformer(2048, 24, 32, 8192, vocab_size=RELEASED_VOCAB),
            published="IDEA-CCNL/Zhouwenwang-Unified-1.3B",
            params=1_300_000_000,
            tolerance=0.06,  # 1.233B with the 12,000-token vocabulary; the name rounds up
        ),
    },
    build_config=roformer_config,
    objectives=("unified", "mlm", "clm"),
    methods=("head", "unimc", "unimc_zero", "tfidf", "clm", "lead", "mlm_correct", "copy", "ngram"),
    operations=("fill_mask", "zero_shot", "classify", "ner", "generate"),
    model_types=("zhouwenwang",),
    released_layout=_released_layout,
    load_released=_load_released,
    released_auto_classes=(
        "AutoModel",
        "AutoModelForMaskedLM",
        "AutoModelForCausalLM",
        "AutoModelForSequenceClassification",
        "AutoModelForTokenClassification",
        "AutoModelForMultipleChoice",
    ),
)
