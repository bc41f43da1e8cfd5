"""Wenzhong 闻仲: unidirectional GPT2 decoders, 0.1B-3.5B, for generation (causal LM)."""

from __future__ import annotations

from typing import Any

from fs_ray.families.base import Family, Preset, doc_end


def gpt2_config(shape: dict[str, Any], seq_len: int, special: dict[str, Any]):
    from transformers import GPT2Config

    shape = dict(shape)
    shape.setdefault("n_positions", max(1024, seq_len))
    eos = doc_end(special)
    bos = special.get("cls") if special.get("cls") is not None else eos
    return GPT2Config(bos_token_id=bos, eos_token_id=eos, pad_token_id=special.get("pad"), **shape)


def gpt2(embd: int, layers: int, heads: int, **more: Any) -> dict[str, Any]:
    return {"n_embd": embd, "n_layer": layers, "n_head": heads, **more}


GPT2_BPE_VOCAB = 50257  # Wenzhong keeps GPT-2's byte-level BPE vocabulary

FAMILY = Family(
    name="wenzhong",
    summary="GPT2 decoder (causal LM), 0.1B-3.5B: generation",
    presets={
        "tiny": Preset(gpt2(64, 2, 2)),
        "small": Preset(gpt2(256, 8, 4, n_positions=512)),  # the CPU generation table's shape
        "base": Preset(
            gpt2(768, 12, 12, vocab_size=GPT2_BPE_VOCAB),
            published="IDEA-CCNL/Wenzhong-GPT2-110M",
            params=110_000_000,
            tolerance=0.15,  # the name's "110M" rounds GPT2-small's 124M (tied embeddings counted once)
        ),
        "large": Preset(gpt2(1024, 24, 16)),
        "3.5b": Preset(
            gpt2(3072, 30, 32, vocab_size=GPT2_BPE_VOCAB),
            published="IDEA-CCNL/Wenzhong-GPT2-3.5B",
            params=3_500_000_000,
        ),
    },
    build_config=gpt2_config,
    objectives=("clm",),
    methods=("clm", "lead"),
    operations=("generate",),
    model_types=("gpt2",),
)
