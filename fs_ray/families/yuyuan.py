"""Yuyuan 余元: Wenzhong's GPT2 continued on medical text (domain pretraining, causal LM)."""

from __future__ import annotations

from fs_ray.families.base import Family, Preset
from fs_ray.families.wenzhong import GPT2_BPE_VOCAB, gpt2, gpt2_config

FAMILY = Family(
    name="yuyuan",
    summary="GPT2 decoder continued on a (medical) domain corpus: generation",
    presets={
        "tiny": Preset(gpt2(64, 2, 2)),
        "3.5b": Preset(
            gpt2(3072, 30, 32, vocab_size=GPT2_BPE_VOCAB),
            published="IDEA-CCNL/Yuyuan-GPT2-3.5B",
            params=3_500_000_000,
        ),
    },
    build_config=gpt2_config,
    objectives=("clm",),
    methods=("clm", "lead"),
    operations=("generate",),
    model_types=("gpt2",),
)
