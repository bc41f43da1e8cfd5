"""Randeng-BART 燃灯: BART encoder-decoders (139M, 759M), pretrained by text infilling with
sentence permutation; generation (summaries, titles, questions) after fine-tuning."""

from __future__ import annotations

from typing import Any

from fs_ray.families.base import Family, Preset, doc_end, encoder_decoder

BART_VOCAB = 50265  # both released configs keep bart-base's embedding rows, more than either tokenizer uses


def bart_config(shape: dict[str, Any], seq_len: int, special: dict[str, Any]):
    """A BartConfig whose special ids are the corpus's: with the Chinese BERT vocabulary that is
    Randeng-BART-759M-Chinese-BertTokenizer's layout (bos [CLS], eos and decoder start [SEP],
    pad [PAD]); with a SentencePiece one, <s>/</s>/<pad>."""
    from transformers import BartConfig

    end = doc_end(special)
    bos = special.get("cls") if special.get("cls") is not None else special.get("bos")
    return BartConfig(
        activation_function="gelu",
        scale_embedding=False,
        pad_token_id=special.get("pad") or 0,
        bos_token_id=bos if bos is not None else end,
        eos_token_id=end,
        decoder_start_token_id=end,
        forced_eos_token_id=end,
        **encoder_decoder(shape, seq_len),
    )


def _bart(d_model: int, layers: int, heads: int, ffn: int, **more: Any) -> dict[str, Any]:
    return {"d_model": d_model, "layers": layers, "heads": heads, "ffn": ffn, **more}


FAMILY = Family(
    name="randeng-bart",
    summary="BART encoder-decoder (text infilling + sentence permutation), 139M-759M: generation",
    presets={
        "tiny": Preset(_bart(64, 2, 2, 256, max_position_embeddings=512)),  # fine-tuning inputs outgrow 128
        # the CPU quality-table shape (Erlangshen small's width): 4 + 4 layers, 256 wide
        "small": Preset(_bart(256, 4, 4, 1024, max_position_embeddings=512)),
        # bart-base's shape; released with a 40,000-piece SentencePiece tokenizer (T5Tokenizer class)
        "139m": Preset(
            _bart(768, 6, 12, 3072, vocab_size=BART_VOCAB, max_position_embeddings=1024),
            published="IDEA-CCNL/Randeng-BART-139M",
            params=139_000_000,
        ),
        # bart-large's width, 24 + 24 layers; released with the Chinese BERT vocabulary
        "759m": Preset(
            _bart(1024, 24, 16, 4096, vocab_size=BART_VOCAB, max_position_embeddings=1024),
            published="IDEA-CCNL/Randeng-BART-759M-Chinese-BertTokenizer",
            params=759_000_000,
        ),
    },
    build_config=bart_config,
    objectives=("bart",),
    methods=("seq2seq", "lead"),
    operations=("generate",),
    model_types=("bart",),
    tokenizer="bert-chinese",
)
