"""Model families, size presets, and the objective-aware wrappers the training loop drives.

Architectures are Hugging Face's own (``BertForMaskedLM``, ``MegatronBertForMaskedLM``,
``GPT2LMHeadModel``, ``T5ForConditionalGeneration``); fs_ray only chooses shapes, builds them
from a config or loads a local Hugging Face folder, and wraps them so that one ``forward``
returns the objective's loss. The wrappers are what DeepSpeed sees; export unwraps them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

FAMILY_OBJECTIVE = {
    "erlangshen": "mlm",
    "zhouwenwang": "mlm",
    "wenzhong": "clm",
    "yuyuan": "clm",
    "randeng": "span",
}

# Shapes per family. tiny runs on a laptop CPU in seconds; the large ones are the published sizes.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "mlm": {
        "tiny": {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 256,
        },
        "small": {  # BERT-mini's shape (Turc et al. 2019): what 2 CPU cores pretrain in an hour
            "hidden_size": 256,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 1024,
        },
        "base": {
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
        },
        "large": {
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
        },
        # Erlangshen-MegatronBert-1.3B as published
        "1.3b": {
            "architecture": "megatron",
            "hidden_size": 2048,
            "num_hidden_layers": 24,
            "num_attention_heads": 8,
            "intermediate_size": 8192,
            "vocab_size": 21248,
            "hidden_act": "gelu_new",
        },
    },
    "clm": {
        "tiny": {"n_embd": 64, "n_layer": 2, "n_head": 2},
        "base": {"n_embd": 768, "n_layer": 12, "n_head": 12},  # Wenzhong-GPT2-110M
        "large": {"n_embd": 1024, "n_layer": 24, "n_head": 16},
        "3.5b": {"n_embd": 3072, "n_layer": 30, "n_head": 32},  # Wenzhong-GPT2-3.5B
    },
    "span": {
        "tiny": {
            "d_model": 64,
            "d_ff": 256,
            "d_kv": 32,
            "num_layers": 2,
            "num_decoder_layers": 2,
            "num_heads": 2,
        },
        "small": {
            "d_model": 512,
            "d_ff": 2048,
            "d_kv": 64,
            "num_layers": 6,
            "num_decoder_layers": 6,
            "num_heads": 8,
        },
        "base": {
            "d_model": 768,
            "d_ff": 3072,
            "d_kv": 64,
            "num_layers": 12,
            "num_decoder_layers": 12,
            "num_heads": 12,
        },
    },
}


def objective_of(family: str) -> str:
    return FAMILY_OBJECTIVE[family]


def hf_config(
    family: str,
    preset: str,
    vocab_size: int,
    seq_len: int,
    special: dict[str, Any],
    overrides: dict[str, Any],
):
    """A transformers config for a family + preset; the vocabulary size comes from the corpus."""
    from transformers import BertConfig, GPT2Config, MegatronBertConfig, T5Config

    objective = objective_of(family)
    if preset not in PRESETS[objective]:
        raise ValueError(
            f"model.preset: {preset!r} is not a {family} preset ({', '.join(PRESETS[objective])})"
        )
    shape = dict(PRESETS[objective][preset])
    shape.update(overrides)
    architecture = shape.pop("architecture", "bert")
    shape["vocab_size"] = max(int(shape.get("vocab_size", 0)), vocab_size)
    if objective == "mlm":
        cls = MegatronBertConfig if architecture == "megatron" else BertConfig
        shape.setdefault("max_position_embeddings", max(512, seq_len))
        return cls(pad_token_id=special.get("pad") or 0, **shape)
    if objective == "clm":
        shape.setdefault("n_positions", max(1024, seq_len))
        eos = special.get("sep") if special.get("sep") is not None else special.get("eos")
        return GPT2Config(
            bos_token_id=special.get("cls") or eos, eos_token_id=eos, pad_token_id=special.get("pad"), **shape
        )
    eos = special.get("sep") if special.get("sep") is not None else special.get("eos")
    return T5Config(
        pad_token_id=special.get("pad") or 0,
        eos_token_id=eos,
        decoder_start_token_id=special.get("pad") or 0,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        **shape,
    )


def build_model(
    family: str, preset: str, from_pretrained: str | None, vocab_size: int, seq_len: int, special, overrides
):
    """(Hugging Face model, objective). ``from_pretrained`` continues a local folder's weights."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

    objective = objective_of(family)
    auto = {"mlm": AutoModelForMaskedLM, "clm": AutoModelForCausalLM, "span": AutoModelForSeq2SeqLM}[
        objective
    ]
    if from_pretrained:
        model = auto.from_pretrained(from_pretrained, local_files_only=True, **overrides)
        if model.get_input_embeddings().num_embeddings < vocab_size:
            model.resize_token_embeddings(vocab_size)
        return model, objective
    config = hf_config(family, preset, vocab_size, seq_len, special, overrides)
    return auto.from_config(config), objective


class MaskedLMObjective(nn.Module):
    """BERT-style MLM whose vocabulary projection runs only on the masked positions.

    Hugging Face's ``ForMaskedLM`` forward projects every position onto the vocabulary; with
    15% masking that is ~85% wasted work in the largest matmul of a small model.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels):
        base = getattr(self.model, self.model.base_model_prefix)
        hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        picked = labels != -100
        logits = self.model.cls(hidden[picked])
        return nn.functional.cross_entropy(logits.float(), labels[picked])


class ModelLossObjective(nn.Module):
    """Causal LM and seq2seq: the Hugging Face model computes its own loss from ``labels``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss


def wrap(model: nn.Module, objective: str) -> nn.Module:
    return (MaskedLMObjective if objective == "mlm" else ModelLossObjective)(model)


# ---------------------------------------------------------------------------------------------
# fine-tuning
# ---------------------------------------------------------------------------------------------
HEAD_CLASSES = {
    "single": "AutoModelForSequenceClassification",
    "pair": "AutoModelForSequenceClassification",
    "coref": "AutoModelForSequenceClassification",
    "choice": "AutoModelForMultipleChoice",
    "tagging": "AutoModelForTokenClassification",
}


def build_task_model(
    model_cfg, method: str, shape: str, labels: list[str], vocab_size: int, max_len: int, special
) -> nn.Module:
    """The Hugging Face model a fine-tuning method trains: a task head on the encoder, or the
    MLM itself for UniMC. ``model_cfg.from_pretrained`` (an exported folder) supplies the encoder
    weights; otherwise ``model_cfg.preset`` starts from scratch."""
    import transformers

    auto = getattr(
        transformers, "AutoModelForMaskedLM" if method.startswith("unimc") else HEAD_CLASSES[shape]
    )
    head_kwargs: dict[str, Any] = {}
    if not method.startswith("unimc") and shape != "choice":
        head_kwargs = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    if model_cfg.from_pretrained:
        return auto.from_pretrained(
            model_cfg.from_pretrained, local_files_only=True, **head_kwargs, **model_cfg.overrides
        )
    config = hf_config(model_cfg.family, model_cfg.preset, vocab_size, max_len, special, model_cfg.overrides)
    for key, value in head_kwargs.items():
        setattr(config, key, value)
    return auto.from_config(config)


class HeadObjective(nn.Module):
    """Task head: the Hugging Face model's own cross-entropy (sequence, choice or token level)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def logits(self, input_ids, attention_mask, token_type_ids, **_):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).logits

    def forward(self, input_ids, attention_mask, token_type_ids, label=None, labels=None, **_):
        target = labels if labels is not None else label
        logits = self.logits(input_ids, attention_mask, token_type_ids)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))


class UniMCObjective(nn.Module):
    """UniMC: each option's score is the MLM logit of ``yes_id`` at the option's ``[MASK]``;
    the loss is cross-entropy over the options of a row (padding options score -inf)."""

    def __init__(self, model: nn.Module, yes_id: int):
        super().__init__()
        self.model = model
        self.yes_id = yes_id
        if not hasattr(model, "cls"):
            raise ValueError(
                f"UniMC needs a BERT-style masked LM with a .cls head, got {type(model).__name__}"
            )

    def logits(self, input_ids, attention_mask, token_type_ids, mask_pos, option_ids, **_):
        base = getattr(self.model, self.model.base_model_prefix)
        hidden = base(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        picked = hidden[rows, mask_pos]  # [B, K, H]
        scores = self.model.cls(picked)[..., self.yes_id].float()
        return scores.masked_fill(option_ids < 0, float("-inf"))

    def forward(self, input_ids, attention_mask, token_type_ids, mask_pos, option_ids, label, **_):
        scores = self.logits(input_ids, attention_mask, token_type_ids, mask_pos, option_ids)
        return nn.functional.cross_entropy(scores, label)
