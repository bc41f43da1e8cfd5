"""Randeng 燃灯: encoder-decoders (T5), 77M-784M, pretrained with T5 span corruption."""

from __future__ import annotations

from typing import Any

from fs_ray.families.base import Family, Preset, doc_end

RANDENG_T5_VOCAB = 32596  # mT5's vocabulary cut to the Chinese and English pieces Randeng-T5 keeps


def t5_config(shape: dict[str, Any], seq_len: int, special: dict[str, Any]):
    from transformers import T5Config

    shape = {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, **shape}
    pad = special.get("pad") or 0
    return T5Config(pad_token_id=pad, eos_token_id=doc_end(special), decoder_start_token_id=pad, **shape)


def untie_lm_head(model):
    """Give a T5 its own output projection, as mT5 and the released Randeng-T5 checkpoints have.

    transformers 5 builds every T5 with ``lm_head`` tied to the input embeddings whatever the
    config says; a tied lm_head is a different (smaller) model than the one Randeng publishes.
    ``tie_word_embeddings: false`` is what gets saved, so a reload keeps it apart and does not
    rescale the decoder output (T5 v1.1 behaviour). The new projection starts at std
    ``d_model ** -0.5`` so that, unscaled, the first logits are O(1) and the first loss ~ln(vocab).
    """
    import torch

    head = getattr(model, "lm_head", None)
    if head is None or head.weight is not model.get_input_embeddings().weight:
        return model
    weight = torch.empty_like(head.weight).normal_(0.0, model.config.d_model**-0.5)
    head.weight = torch.nn.Parameter(weight)
    model.all_tied_weights_keys.pop("lm_head.weight", None)
    model.config.tie_word_embeddings = False
    return model


FENGSHEN_SENTINELS = 100  # span corruption needs far fewer (about 26 spans in 512 tokens)


def fengshen_sentinels(folder: str, tokenizer) -> tuple[int, ...]:
    """Sentinel ids of a released Randeng-T5 tokenizer: FengShen's convention.

    Randeng-T5 ships ``spiece.model`` with ``"extra_ids": 0`` in ``tokenizer_config.json``: no
    ``<extra_id_N>`` pieces; FengShen's span-corruption collator uses the last ids of the
    vocabulary instead, the k-th span (from 0) getting ``len(tokenizer) - 1 - k``. A T5 folder with
    literal sentinels never reaches this rule (they win); any other folder gets ().
    """
    import json
    import os

    path = os.path.join(folder, "tokenizer_config.json")
    if not os.path.isfile(path):
        return ()
    with open(path, encoding="utf-8") as f:
        tok_cfg = json.load(f)
    t5_class = str(tok_cfg.get("tokenizer_class") or "").removesuffix("Fast") in (
        "T5Tokenizer",
        "MT5Tokenizer",
    )
    if not t5_class or tok_cfg.get("extra_ids") != 0:
        return ()
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    return tuple(size - 1 - k for k in range(FENGSHEN_SENTINELS))


def _t5(d_model: int, d_ff: int, layers: int, heads: int, d_kv: int = 64, **more: Any) -> dict[str, Any]:
    return {
        "d_model": d_model,
        "d_ff": d_ff,
        "d_kv": d_kv,
        "num_layers": layers,
        "num_decoder_layers": layers,
        "num_heads": heads,
        **more,
    }


FAMILY = Family(
    name="randeng",
    summary="T5 encoder-decoder (span corruption), 77M-784M: understanding + generation",
    presets={
        "tiny": Preset(_t5(64, 256, 2, 2, d_kv=32)),
        "small": Preset(_t5(256, 1024, 4, 4)),  # the CPU quality-table shape, 4 + 4 layers
        # mT5-small's shape with Randeng's vocabulary
        "77m": Preset(
            _t5(512, 1024, 8, 6, vocab_size=RANDENG_T5_VOCAB),
            published="IDEA-CCNL/Randeng-T5-77M",
            params=77_000_000,
        ),
        # mT5-large's shape with Randeng's vocabulary
        "784m": Preset(
            _t5(1024, 2816, 24, 16, vocab_size=RANDENG_T5_VOCAB),
            published="IDEA-CCNL/Randeng-T5-784M",
            params=784_000_000,
        ),
    },
    build_config=t5_config,
    after_build=untie_lm_head,
    objectives=("span",),
    methods=("seq2seq", "lead"),
    operations=("generate",),
    model_types=("t5", "mt5"),
    tokenizer="bert-chinese-sentinels",
    sentinels=fengshen_sentinels,
)
