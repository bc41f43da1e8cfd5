"""Randeng-Pegasus 燃灯: Pegasus encoder-decoders (238M, 523M) pretrained by gap-sentence
generation, with Pegasus's Chinese tokenizer (jieba words first, WordPiece for the rest)."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

from fs_ray.families.base import Family, Preset, encoder_decoder

PEGASUS_VOCAB = 50000
# FengShen's PegasusTokenizer renames these lines of its BERT-derived vocab.txt when it loads it
RENAMED = {"[PAD]": "<pad>", "[unused1]": "</s>", "[unused2]": "<mask_1>", "[unused3]": "<mask_2>"}
SPECIALS = ("<pad>", "</s>", "<mask_1>", "<mask_2>", "[UNK]")
BUILTIN = "pegasus-chinese"  # the Chinese BERT vocabulary, renamed, plus the shipped corpus's common words


def read_vocab(path: str) -> dict[str, int]:
    """token -> id of a Randeng-Pegasus ``vocab.txt`` (one token per line, ids by line), renamed."""
    with open(path, encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    return {RENAMED.get(t, t): i for i, t in enumerate(tokens)}


def pegasus_tokenizer(vocab_path: str):
    """Randeng-Pegasus's tokenization as a fast tokenizer: normalisation (clean-up, lowercase), the
    :class:`~fs_ray.data.tokenization.JiebaWords` pre-tokenizer, WordPiece, then ``</s>`` appended."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import WordPiece

    from fs_ray.data.tokenization import with_jieba_words

    vocab = read_vocab(vocab_path)
    missing = [t for t in SPECIALS if t not in vocab]
    if missing:
        raise ValueError(f"{vocab_path}: not a Pegasus vocabulary, it lacks {', '.join(missing)}")
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=False, strip_accents=False, lowercase=True
    )
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])
    eos = vocab["</s>"]
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A $B </s>", special_tokens=[("</s>", eos)]
    )
    return with_jieba_words(tok)


def builtin_tokenizer():
    from fs_ray.assets import ASSETS_DIR

    return pegasus_tokenizer(str(ASSETS_DIR / "vocab" / "pegasus_chinese_vocab.txt"))


def folder_tokenizer(folder: str):
    """A Randeng-Pegasus folder (its own or an fs_ray export of one): ``vocab.txt`` beside a Pegasus
    config or a Pegasus tokenizer class. Hugging Face's PegasusTokenizer would want spiece.model."""
    vocab = os.path.join(folder, "vocab.txt")
    if not os.path.isfile(vocab):
        return None
    kinds = []
    for name, key in (("config.json", "model_type"), ("tokenizer_config.json", "tokenizer_class")):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                kinds.append(str(json.load(f).get(key) or "").lower())
    return pegasus_tokenizer(vocab) if any("pegasus" in k for k in kinds) else None


def word_vocabulary(texts: list[str], base: list[str], size: int, min_count: int = 3) -> list[str]:
    """``base`` plus the ``size`` most frequent jieba words (two characters or more, lowercased,
    accurate mode without HMM, as the tokenizer cuts) that ``base`` lacks: how Randeng-Pegasus grew
    the BERT vocabulary to 50,000 entries, at the scale of the shipped corpus."""
    import jieba

    from fs_ray.data.tokenization import WordSegmenter

    WordSegmenter()
    known = set(base)
    counts = Counter(
        w
        for t in texts
        for w in jieba.cut(t.lower(), HMM=False)
        if len(w) > 1 and w not in known and w.strip()
    )
    words = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
    return base + words[:size]


def pegasus_config(shape: dict[str, Any], seq_len: int, special: dict[str, Any]):
    """A PegasusConfig with Randeng-Pegasus's conventions: pad 0 starts the decoder, </s> ends."""
    from transformers import PegasusConfig

    pad = special.get("pad") or 0
    eos = special.get("eos") if special.get("eos") is not None else special.get("sep")
    return PegasusConfig(
        activation_function="relu",
        scale_embedding=True,
        pad_token_id=pad,
        eos_token_id=eos,
        decoder_start_token_id=pad,
        forced_eos_token_id=eos,
        **encoder_decoder(shape, seq_len),
    )


def _pegasus(d_model: int, layers: int, heads: int, ffn: int, **more: Any) -> dict[str, Any]:
    return {"d_model": d_model, "layers": layers, "heads": heads, "ffn": ffn, **more}


FAMILY = Family(
    name="randeng-pegasus",
    summary="Pegasus encoder-decoder (gap sentences, jieba-word tokenizer), 238M-523M: summaries",
    presets={
        "tiny": Preset(_pegasus(64, 2, 2, 256, max_position_embeddings=512)),
        "small": Preset(_pegasus(256, 4, 4, 1024, max_position_embeddings=512)),  # the CPU table's shape
        "238m": Preset(
            _pegasus(768, 12, 12, 3072, vocab_size=PEGASUS_VOCAB, max_position_embeddings=1024),
            published="IDEA-CCNL/Randeng-Pegasus-238M-Chinese",
            params=238_000_000,
        ),
        "523m": Preset(
            _pegasus(1024, 16, 16, 4096, vocab_size=PEGASUS_VOCAB, max_position_embeddings=1024),
            published="IDEA-CCNL/Randeng-Pegasus-523M-Chinese",
            params=523_000_000,
        ),
    },
    build_config=pegasus_config,
    objectives=("gsg",),
    methods=("seq2seq", "lead"),
    operations=("generate",),
    model_types=("pegasus",),
    tokenizer=BUILTIN,
    tokenizers={BUILTIN: builtin_tokenizer},
    folder_tokenizer=folder_tokenizer,
)
