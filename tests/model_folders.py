"""Tiny Hugging Face folders in the layout fs_ray's exports write (config.json, model.safetensors,
tokenizer.json, and fs_ray_task.json for fine-tuned models), built from fs_ray's own presets with
seeded weights, for the serving tests and benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fs_ray.data.digits import CLASSES
from fs_ray.data.tokenization import load_tokenizer, special_ids
from fs_ray.families import get_family


def _save(model, tokenizer, out: Path, card: dict | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
    if card is not None:
        (out / "fs_ray_task.json").write_text(json.dumps(card, ensure_ascii=False, indent=2), encoding="utf-8")
    return out


def _config(family: str, preset: str, tokenizer, seq_len: int = 128, **head):
    cfg = get_family(family).config(
        preset, tokenizer.get_vocab_size(with_added_tokens=True), seq_len, special_ids(tokenizer).as_dict()
    )
    for key, value in head.items():
        setattr(cfg, key, value)
    return cfg


def mlm_folder(out: Path, preset: str = "tiny", seed: int = 0) -> Path:
    from transformers import AutoModelForMaskedLM

    tok = load_tokenizer("bert-chinese")
    torch.manual_seed(seed)
    return _save(AutoModelForMaskedLM.from_config(_config("erlangshen", preset, tok)), tok, out)


def classifier_folder(
    out: Path, labels: list[str], task: str = "toy", shape: str = "single", preset: str = "tiny", seed: int = 0,
    max_len: int = 64,
) -> Path:
    from transformers import AutoModelForSequenceClassification

    tok = load_tokenizer("bert-chinese")
    torch.manual_seed(seed)
    cfg = _config(
        "erlangshen", preset, tok, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    card = {"task": task, "method": "head", "shape": shape, "labels": labels, "verbalizer": None,
            "question": "", "max_len": max_len, "truncation": "head_tail", "trained_on": "tests"}
    return _save(AutoModelForSequenceClassification.from_config(cfg), tok, out, card)


def tagger_folder(out: Path, labels: list[str], seed: int = 0, max_len: int = 32) -> Path:
    from transformers import AutoModelForTokenClassification

    tok = load_tokenizer("bert-chinese")
    torch.manual_seed(seed)
    cfg = _config(
        "erlangshen", "tiny", tok, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    card = {"task": "ner", "method": "head", "shape": "tagging", "labels": labels, "verbalizer": None,
            "question": "", "max_len": max_len, "truncation": "head", "trained_on": "tests"}
    return _save(AutoModelForTokenClassification.from_config(cfg), tok, out, card)


def gpt2_folder(out: Path, seed: int = 0, **shape) -> Path:
    """Wenzhong's tiny preset, or ``shape`` (n_embd, n_layer, ...) over it: a slower model for
    streaming tests, whose generation takes long enough for a client to go away mid-way."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer("bert-chinese")
    torch.manual_seed(seed)
    cfg = _config("wenzhong", "tiny", tok)
    for key, value in shape.items():
        setattr(cfg, key, value)
    return _save(AutoModelForCausalLM.from_config(cfg), tok, out)


def generation_folder(
    out: Path, seed: int = 0, prompt: str = "{text}\n标题：", max_target_len: int = 12, num_beams: int = 2
) -> Path:
    """A Randeng (T5) fine-tuned for a generation task: the export plus its generation task card."""
    from transformers import AutoModelForSeq2SeqLM

    from fs_ray.generation import DECODING

    tok = load_tokenizer("bert-chinese-sentinels")
    torch.manual_seed(seed)
    card = {"task": "csl_title", "method": "seq2seq", "shape": "generation", "labels": [], "verbalizer": {},
            "question": "", "max_len": 64, "truncation": "head", "prompt": prompt,
            "max_target_len": max_target_len,
            "decoding": {**DECODING, "no_repeat_ngram_size": 2, "num_beams": num_beams},
            "trained_on": "tests"}  # fmt: skip
    return _save(AutoModelForSeq2SeqLM.from_config(_config("randeng", "tiny", tok)), tok, out, card)


def t5_folder(out: Path, seed: int = 0) -> Path:
    from transformers import AutoModelForSeq2SeqLM

    tok = load_tokenizer("bert-chinese-sentinels")
    torch.manual_seed(seed)
    return _save(AutoModelForSeq2SeqLM.from_config(_config("randeng", "tiny", tok)), tok, out)


def unimc_folder(out: Path, labels: list[str], verbalizer: dict[str, str], question: str = "", seed: int = 0) -> Path:
    """An MLM fine-tuned with UniMC: the plain MLM weights plus a card naming the method."""
    mlm_folder(out, seed=seed)
    card = {"task": "toy", "method": "unimc", "shape": "single", "labels": labels, "verbalizer": verbalizer,
            "question": question, "max_len": 64, "truncation": "head", "trained_on": "tests"}
    (out / "fs_ray_task.json").write_text(json.dumps(card, ensure_ascii=False, indent=2), encoding="utf-8")
    return out


def bigan_folder(out: Path, seed: int = 0) -> Path:
    """A Bigan (Transformer-XL) export as pretraining writes it: it corrects by rewriting."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer("bert-chinese")
    torch.manual_seed(seed)
    return _save(AutoModelForCausalLM.from_config(_config("bigan", "tiny", tok)), tok, out)


def corrector_folder(out: Path, method: str = "mlm_correct", seed: int = 0, max_len: int = 48) -> Path:
    """A correction export as fine-tuning writes it: an Erlangshen MLM corrector (``mlm_correct``)
    or a Bigan rewriter (``clm``), with its correction task card."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from fs_ray.generation import DECODING

    tok = load_tokenizer("bert-chinese")
    torch.manual_seed(seed)
    family, auto = ("erlangshen", AutoModelForMaskedLM) if method == "mlm_correct" else ("bigan", AutoModelForCausalLM)
    card = {"task": "sighan15", "method": method, "shape": "correction", "labels": [], "verbalizer": {},
            "question": "", "max_len": max_len, "truncation": "head", "prompt": "", "max_target_len": 20,
            "decoding": dict(DECODING), "trained_on": "tests"}  # fmt: skip
    return _save(auto.from_config(_config(family, "tiny", tok)), tok, out, card)


DIGITS = list(CLASSES)


def taiyi_folder(out: Path, seed: int = 0, classes: list[str] | None = None, templates: list[str] | None = None,
                 max_text_len: int = 16) -> Path:  # fmt: skip
    """A tiny Taiyi export as contrastive pretraining writes it: ``text/`` + ``vision/`` towers,
    the pair's config, tokenizer, CLIP preprocessing and the image-text card (zero-shot classes)."""
    from fs_ray.serving.inference import IMAGE_TEXT_CARD
    from fs_ray.training.contrastive import write_preprocessor

    tok = load_tokenizer("bert-chinese")
    from fs_ray.models.taiyi import TaiyiModel

    torch.manual_seed(seed)
    model = TaiyiModel(_config("taiyi", "tiny", tok, seq_len=64))
    _save(model, tok, out)
    write_preprocessor(str(out), int(model.config.vision_config.image_size))
    card = {"max_text_len": max_text_len, "image_size": int(model.config.vision_config.image_size),
            "classes": classes if classes is not None else DIGITS,
            "templates": templates or ["一张手写数字{}的图片", "数字{}"], "trained_on": "tests"}  # fmt: skip
    (out / IMAGE_TEXT_CARD).write_text(json.dumps(card, ensure_ascii=False, indent=2), encoding="utf-8")
    return out
