"""Taiyi 太乙: a Chinese CLIP — a BERT-family text tower and a CLIP ViT image tower, one embedding space.

Pretrained with the ``contrastive`` objective (symmetric InfoNCE over the global batch, features
all-gathered across Ray Train ranks) on image–text pairs streamed through Ray Data
(:mod:`fs_ray.data.images`); evaluated by zero-shot classification from Chinese prompt templates
and by image↔text retrieval (:mod:`fs_ray.training.contrastive`). The model is
:class:`fs_ray.models.taiyi.TaiyiModel`, saved in the released Taiyi layout (``text/`` a
``BertForSequenceClassification`` whose 512 "labels" are the projection, ``vision/`` an openai CLIP
vision tower with its projection).

A preset's shape holds the text tower's BERT fields at the top, the image tower's CLIP vision
fields under ``vision`` and the shared ``projection_dim``; ``model.overrides`` reaches all three
(``{freeze_vision: true}``, ``{vision: {image_size: 32}}``, ``{projection_dim: 256}``).
"""

from __future__ import annotations

from typing import Any

from fs_ray.families.base import Family, Preset
from fs_ray.families.erlangshen import BERT_CHINESE_VOCAB
from fs_ray.families.erlangshen import _bert as _tower  # the same four fields name a ViT's shape

PAIR_KEYS = ("projection_dim", "freeze_vision", "logit_scale_init_value", "logit_scale_max")


def taiyi_config(shape: dict[str, Any], seq_len: int, special: dict[str, Any]):
    from fs_ray.models.taiyi import make_config

    text = dict(shape)
    vision = dict(text.pop("vision"))
    pair = {k: text.pop(k) for k in PAIR_KEYS if k in text}
    projection = int(pair.pop("projection_dim"))
    text.setdefault("max_position_embeddings", max(512, seq_len))
    text["pad_token_id"] = special.get("pad") or 0
    return make_config(text, vision, projection, **pair)


def _pair(text: dict[str, Any], vision: dict[str, Any], projection_dim: int) -> dict[str, Any]:
    return {**text, "vision": vision, "projection_dim": projection_dim}


def text_tower_params(model) -> int:
    """The published Taiyi sizes (102M, 326M) count the text tower alone: the image tower is
    openai's CLIP ViT, kept frozen in Taiyi's recipe."""
    return sum(p.numel() for p in model.text_model.parameters())


FAMILY = Family(
    name="taiyi",
    summary="Chinese CLIP: BERT text tower + CLIP ViT image tower, contrastive, 102M-326M text towers: "
    "zero-shot image classification and image-text retrieval",
    presets={
        # 16x16 images in 4x4 patches: the UCI digits demo, seconds a step on a CPU
        "tiny": Preset(_pair(_tower(64, 2, 2, 256), _tower(64, 2, 2, 256, image_size=16, patch_size=4), 64)),
        "small": Preset(_pair(_tower(256, 4, 4, 1024), _tower(256, 4, 4, 1024, image_size=32, patch_size=4), 256)),
        "102m": Preset(
            # chinese-roberta-wwm-ext (BERT-base) against openai's ViT-B/32
            _pair(
                _tower(768, 12, 12, 3072, vocab_size=BERT_CHINESE_VOCAB),
                _tower(768, 12, 12, 3072, image_size=224, patch_size=32),
                512,
            ),
            published="IDEA-CCNL/Taiyi-CLIP-Roberta-102M-Chinese",
            params=102_000_000,
        ),
        "326m": Preset(
            # chinese-roberta-wwm-ext-large against openai's ViT-L/14
            _pair(
                _tower(1024, 24, 16, 4096, vocab_size=BERT_CHINESE_VOCAB),
                _tower(1024, 24, 16, 4096, image_size=224, patch_size=14),
                768,
            ),
            published="IDEA-CCNL/Taiyi-CLIP-Roberta-large-326M-Chinese",
            params=326_000_000,
        ),
    },
    build_config=taiyi_config,
    objectives=("contrastive",),
    operations=("image_embed", "text_embed", "image_classify"),
    model_types=("taiyi_clip",),
    architecture_kinds={"TaiyiModel": "image_text"},
    published_params=text_tower_params,
)
