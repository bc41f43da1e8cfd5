"""Tiny random-weight folders in the layout of each released Fengshenbang checkpoint, built at test
time (nothing downloaded, nothing large committed).

Each imitates what the hub folder holds: the architecture class and ``model_type`` of its
``config.json`` (with or without ``architectures``), its special and generation ids, its weight file
(``pytorch_model.bin`` for the 2022 releases) and its own tokenizer files in their own format
(``vocab.txt`` only, ``vocab.json`` + ``merges.txt``, ``spiece.model`` with ``extra_ids: 0``). Shapes
are tiny; vocabularies are the real BERT one or small ones trained here on the demo corpus.

The Taiyi issue adds its layout to :data:`LAYOUTS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from fs_ray.assets import BUILTIN_VOCABS, DEMO_CORPUS

TINY_BERT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}


@dataclass(frozen=True)
class Layout:
    name: str  # the released checkpoint it imitates
    family: str  # the fs_ray family that owns its model_type
    kind: str  # what fs_ray reads it as (fs_ray.pretrained.ModelFolder.kind)
    build: Callable[[Path], Path]
    objective: str | None = None  # continued pretraining
    method: str | None = None  # fine-tuning (on tests.task_data's sep_single task)
    files: tuple[str, ...] = ()  # its tokenizer files, which an export must keep


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2), encoding="utf-8")


def _save(model, out: Path, bin_weights: bool, drop_architectures: bool = False) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=not bin_weights)
    if bin_weights and not (out / "pytorch_model.bin").exists():  # transformers 5 may still write safetensors
        from safetensors.torch import load_file

        torch.save(load_file(out / "model.safetensors"), out / "pytorch_model.bin")
        (out / "model.safetensors").unlink()
    if drop_architectures:
        cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
        cfg.pop("architectures", None)
        _write_json(out / "config.json", cfg)
    (out / "generation_config.json").unlink(missing_ok=True)  # the 2022 releases have none
    return out


def _bert_vocab(out: Path) -> int:
    vocab = BUILTIN_VOCABS["bert-chinese"].read_bytes()
    (out / "vocab.txt").write_bytes(vocab)
    return len(vocab.decode("utf-8").splitlines())


def bert(out: Path, arch: str = "BertForMaskedLM", megatron: bool = False, **head) -> Path:
    """Erlangshen: config.json + pytorch_model.bin + vocab.txt, nothing else (as on the hub)."""
    import transformers

    out.mkdir(parents=True, exist_ok=True)
    vocab = _bert_vocab(out)
    cls = transformers.MegatronBertConfig if megatron else transformers.BertConfig
    config = cls(vocab_size=vocab, pad_token_id=0, **TINY_BERT, **head)
    torch.manual_seed(0)
    return _save(getattr(transformers, arch)(config), out, bin_weights=True)


def _demo_lines(n: int = 2000) -> list[str]:
    return [t for t in DEMO_CORPUS.read_text(encoding="utf-8").splitlines() if t.strip()][:n]


def gpt2(out: Path) -> Path:
    """Wenzhong/Yuyuan: GPT2LMHeadModel with GPT-2's byte-level BPE files (vocab.json + merges.txt);
    bos = eos = <|endoftext|>, the last id, and no pad id, as GPT-2 has."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_demo_lines(), vocab_size=1200, min_frequency=2, show_progress=False)
    bpe.add_special_tokens(["<|endoftext|>"])
    bpe.save_model(str(out))
    eot = bpe.token_to_id("<|endoftext|>")
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    vocab["<|endoftext|>"] = eot
    _write_json(out / "vocab.json", vocab)
    config = GPT2Config(
        vocab_size=bpe.get_vocab_size(),
        n_embd=64,
        n_layer=2,
        n_head=2,
        n_positions=256,
        bos_token_id=eot,
        eos_token_id=eot,
    )
    torch.manual_seed(0)
    return _save(GPT2LMHeadModel(config), out, bin_weights=True)


def t5(out: Path, drop_architectures: bool = False) -> Path:
    """Randeng-T5: MT5ForConditionalGeneration, model_type mt5, an untied lm_head, spiece.model with
    ``extra_ids: 0`` (no <extra_id_N>: FengShen's sentinels are the vocabulary's last ids), pad 0,
    eos 1, decoder start 0, tokenizer_config.json + special_tokens_map.json."""
    import sentencepiece as spm
    from transformers import MT5Config, MT5ForConditionalGeneration

    from fs_ray.families.randeng import untie_lm_head

    out.mkdir(parents=True, exist_ok=True)
    src = out / "_corpus.txt"
    src.write_text("\n".join(_demo_lines()), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(src), model_prefix=str(out / "spiece"), vocab_size=3000, pad_id=0, eos_id=1, unk_id=2,
        bos_id=-1, character_coverage=0.995, model_type="unigram", minloglevel=2, num_threads=1,
    )  # fmt: skip
    src.unlink()
    (out / "spiece.vocab").unlink()
    _write_json(
        out / "tokenizer_config.json",
        {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "extra_ids": 0,
         "additional_special_tokens": None, "sp_model_kwargs": {}, "tokenizer_class": "T5Tokenizer"},
    )  # fmt: skip
    _write_json(
        out / "special_tokens_map.json", {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    )
    config = MT5Config(
        vocab_size=3000, d_model=64, d_ff=128, d_kv=32, num_layers=2, num_decoder_layers=2, num_heads=2,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    return _save(untie_lm_head(MT5ForConditionalGeneration(config)), out, True, drop_architectures)


def bart_spm(out: Path) -> Path:
    """Randeng-BART-139M: BartForConditionalGeneration with a SentencePiece BPE model behind the
    T5Tokenizer class (``extra_ids: 0``, ``<s>`` and ``<mask>`` as additional special tokens; <pad>
    and <mask> appended after the pieces, added_tokens.json) and a tokenizer.json. Its config keeps
    bart-base's ids (bos 0, pad 1, eos 2, decoder start 2) and more embedding rows than pieces."""
    import sentencepiece as spm
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

    out.mkdir(parents=True, exist_ok=True)
    src = out / "_corpus.txt"
    src.write_text("\n".join(_demo_lines()), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(src), model_prefix=str(out / "spiece"), vocab_size=3000, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, character_coverage=0.995, model_type="bpe", minloglevel=2, num_threads=1,
    )  # fmt: skip
    src.unlink()
    (out / "spiece.vocab").unlink()
    _write_json(
        out / "tokenizer_config.json",
        {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "extra_ids": 0,
         "additional_special_tokens": ["<s>", "<mask>"], "sp_model_kwargs": {}, "tokenizer_class": "T5Tokenizer"},
    )  # fmt: skip
    _write_json(out / "added_tokens.json", {"<mask>": 3001, "<pad>": 3000})
    _write_json(
        out / "special_tokens_map.json",
        {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "additional_special_tokens": ["<s>", "<mask>"]},
    )  # fmt: skip
    fast = AutoTokenizer.from_pretrained(str(out))
    assert (fast.convert_tokens_to_ids("<pad>"), fast.convert_tokens_to_ids("<mask>")) == (3000, 3001)
    fast.backend_tokenizer.save(str(out / "tokenizer.json"))
    config = BartConfig(
        vocab_size=3100, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=256,
        bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    return _save(BartForConditionalGeneration(config), out, bin_weights=True)


def bart_bert(out: Path) -> Path:
    """Randeng-BART-759M-Chinese-BertTokenizer: the Chinese BERT vocab.txt (BertTokenizer), bos
    [CLS], eos and decoder start [SEP], pad [PAD], 50265 embedding rows for 21128 tokens."""
    from transformers import BartConfig, BartForConditionalGeneration

    out.mkdir(parents=True, exist_ok=True)
    _bert_vocab(out)
    _write_json(
        out / "special_tokens_map.json",
        {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"},
    )  # fmt: skip
    _write_json(out / "tokenizer_config.json", {"do_lower_case": True, "tokenizer_class": "BertTokenizer"})
    config = BartConfig(
        vocab_size=21200, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=256,
        bos_token_id=101, pad_token_id=0, eos_token_id=102, decoder_start_token_id=102, forced_eos_token_id=102,
    )  # fmt: skip
    torch.manual_seed(0)
    return _save(BartForConditionalGeneration(config), out, bin_weights=True)


def pegasus(out: Path) -> Path:
    """Randeng-Pegasus-238M-Chinese: PegasusForConditionalGeneration with FengShen's vocab.txt (BERT
    lines whose [PAD]/[unused1-3] FengShen's PegasusTokenizer reads as <pad>, </s>, <mask_1>, <mask_2>,
    then jieba words; here the shipped pegasus-chinese one), pad 0 = decoder start, eos 1."""
    import shutil

    from transformers import PegasusConfig, PegasusForConditionalGeneration

    from fs_ray.assets import ASSETS_DIR

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ASSETS_DIR / "vocab" / "pegasus_chinese_vocab.txt", out / "vocab.txt")
    _write_json(out / "tokenizer_config.json", {"tokenizer_class": "PegasusTokenizer", "do_lower_case": True})
    vocab = len((out / "vocab.txt").read_text(encoding="utf-8").split("\n")) - 1
    config = PegasusConfig(
        vocab_size=vocab, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=256,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=1, scale_embedding=True,
    )  # fmt: skip
    torch.manual_seed(0)
    return _save(PegasusForConditionalGeneration(config), out, bin_weights=True)


def zhouwenwang(out: Path) -> Path:
    """Zhouwenwang-Unified-110M: what FengShen's RoFormerModel saved (its module names, no prefix,
    its rotary ``div_term`` buffers, no LM head: the model card multiplies by the word embeddings)
    in pytorch_model.bin, a config.json whose model_type is megatron-bert (the hub's tag) with
    FengShen's RoFormerConfig fields, and a BERT-style vocab.txt (here the Chinese BERT one; the
    released one is RoFormer's 12,000-character list)."""
    from fs_ray.models import zhouwenwang as zw

    out.mkdir(parents=True, exist_ok=True)
    vocab = _bert_vocab(out)
    config = zw.ZhouwenwangConfig(vocab_size=vocab, **TINY_BERT)
    torch.manual_seed(0)
    base = zw.ZhouwenwangModel(config)
    state = zw.to_fengshen({f"bert.{k}": v for k, v in base.state_dict().items()}, config)
    torch.save(state, out / "pytorch_model.bin")
    _write_json(out / "config.json", zw.config_to_fengshen(config))
    return out


def bigan(out: Path) -> Path:
    """Bigan-Transformer-XL-denoise-1.1B: FengShen's TransfoXLDenoiseModel (its module names, the
    ``inv_freq`` buffer included) in pytorch_model.bin, a config.json with FengShen's fields,
    ``model_type: transfo_xl_denoise`` and ``architectures: [TransfoXLDenoiseModel]``, and a
    SentencePiece ``spiece.model`` (BPE, trained here) read by ``TransfoXLDenoiseTokenizer``, whose
    ``<|endoftext|>`` comes after the pieces."""
    import sentencepiece as spm

    from fs_ray.models.bigan import TransfoXLDenoiseConfig, TransfoXLDenoiseForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    src = out / "_corpus.txt"
    src.write_text("\n".join(_demo_lines()), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(src), model_prefix=str(out / "spiece"), vocab_size=3000, model_type="bpe",
        character_coverage=0.995, minloglevel=2, num_threads=1,
    )  # fmt: skip
    src.unlink()
    (out / "spiece.vocab").unlink()
    _write_json(out / "tokenizer_config.json", {"tokenizer_class": "TransfoXLDenoiseTokenizer"})
    fields = {
        "num_layers": 2, "vocab_size": 3008, "hidden_size": 64, "num_attention_heads": 2,
        "embedding_dropout_prob": 0.1, "attention_dropout_prob": 0.1, "output_dropout_prob": 0.1,
        "max_sequence_length": 512, "max_memory_length": 512, "checkpoint_activations": False,
        "checkpoint_num_layers": 1, "parallel_output": True, "relative_encoding": True,
    }  # fmt: skip
    torch.manual_seed(0)
    model = TransfoXLDenoiseForCausalLM(TransfoXLDenoiseConfig(**fields))
    with torch.no_grad():  # trained biases are not zero
        model.transformer.r_w_bias.normal_(0, 0.02)
        model.transformer.r_r_bias.normal_(0, 0.02)
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    _write_json(
        out / "config.json",
        {"architectures": ["TransfoXLDenoiseModel"], "model_type": "transfo_xl_denoise", **fields},
    )
    return out


LAYOUTS = [
    Layout("Erlangshen-Roberta-110M", "erlangshen", "mlm", bert, "mlm", "head", ("vocab.txt",)),
    Layout(
        "Erlangshen-Roberta-110M-Sentiment",
        "erlangshen",
        "classifier",
        lambda out: bert(
            out,
            "BertForSequenceClassification",
            num_labels=2,
            id2label={0: "Negative", 1: "Positive"},
            label2id={"Negative": 0, "Positive": 1},
        ),
        None,
        "head",
        ("vocab.txt",),
    ),
    Layout(
        "Erlangshen-Roberta-110M-Similarity",
        "erlangshen",
        "classifier",
        lambda out: bert(out, "BertForSequenceClassification", num_labels=2),
        None,
        "head",
        ("vocab.txt",),
    ),
    Layout(
        "Erlangshen-Roberta-330M-NLI",
        "erlangshen",
        "classifier",
        lambda out: bert(out, "BertForSequenceClassification", num_labels=3),
        None,
        None,
        ("vocab.txt",),
    ),
    Layout(
        "Erlangshen-MegatronBert-1.3B",
        "erlangshen",
        "mlm",
        lambda out: bert(out, "MegatronBertForMaskedLM", megatron=True),
        "mlm",
        "head",
        ("vocab.txt",),
    ),
    Layout("Wenzhong-GPT2-110M", "wenzhong", "clm", gpt2, "clm", "clm", ("vocab.json", "merges.txt")),
    Layout(
        "Randeng-T5-77M",
        "randeng",
        "seq2seq",
        t5,
        "span",
        "seq2seq",
        ("spiece.model", "tokenizer_config.json", "special_tokens_map.json"),
    ),
    Layout(
        "Randeng-T5-77M (config.json without architectures)",
        "randeng",
        "seq2seq",
        lambda out: t5(out, drop_architectures=True),
        "span",
        "seq2seq",
        ("spiece.model", "tokenizer_config.json", "special_tokens_map.json"),
    ),
    Layout(
        "Randeng-BART-139M",
        "randeng-bart",
        "seq2seq",
        bart_spm,
        "bart",
        "seq2seq",
        ("spiece.model", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"),
    ),
    Layout(
        "Randeng-BART-759M-Chinese-BertTokenizer",
        "randeng-bart",
        "seq2seq",
        bart_bert,
        "bart",
        "seq2seq",
        ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"),
    ),
    Layout(
        "Randeng-Pegasus-238M-Chinese",
        "randeng-pegasus",
        "seq2seq",
        pegasus,
        "gsg",
        "seq2seq",
        ("vocab.txt", "tokenizer_config.json"),
    ),
    Layout("Zhouwenwang-Unified-110M", "zhouwenwang", "mlm", zhouwenwang, "unified", "head", ("vocab.txt",)),
    Layout(  # the same weights in causal mode, fine-tuned for generation
        "Zhouwenwang-Unified-110M (clm)", "zhouwenwang", "mlm", zhouwenwang, None, "clm", ("vocab.txt",)
    ),
    Layout("Zhouwenwang-Unified-110M (UniMC)", "zhouwenwang", "mlm", zhouwenwang, None, "unimc", ("vocab.txt",)),
    Layout(
        "Bigan-Transformer-XL-denoise-1.1B",
        "bigan",
        "clm",
        bigan,
        "clm",
        "clm",
        ("spiece.model", "tokenizer_config.json"),
    ),
]  # Yuyuan-GPT2-3.5B is Wenzhong's layout (GPT2LMHeadModel, the same BPE files)


def layout(name: str) -> Layout:
    return next(x for x in LAYOUTS if x.name == name)


TINY_VIT = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 96,
            "image_size": 32, "patch_size": 8}  # fmt: skip


def taiyi_text(out: Path, projection: int = 32) -> Path:
    """Taiyi-CLIP-Roberta's text tower: a BertForSequenceClassification whose ``num_labels`` are
    the projection (config.json with a 512-entry id2label on the hub), pytorch_model.bin, vocab.txt."""
    return bert(out, arch="BertForSequenceClassification", num_labels=projection)


def openai_clip(out: Path, projection: int = 32, logit_scale: float = 3.1) -> Path:
    """openai/clip-vit-base-patch32's layout: one CLIPModel folder (``model_type: clip``, an English
    text tower beside the ViT, ``projection_dim`` on the pair, a trained ``logit_scale``)."""
    import transformers

    config = transformers.CLIPConfig(
        text_config={"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "intermediate_size": 64, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config=TINY_VIT,
        projection_dim=projection,
    )  # fmt: skip
    torch.manual_seed(1)
    model = transformers.CLIPModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(logit_scale)
    return _save(model, out, bin_weights=True)
