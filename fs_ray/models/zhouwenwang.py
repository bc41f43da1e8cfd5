"""Zhouwenwang 周文王: one RoFormer encoder that understands (bidirectional) and generates (causal).

The network is the one FengShen's ``fengshen/models/roformer`` defines and the released
Zhouwenwang-Unified-110M / -1.3B checkpoints were saved from:

- Megatron-style pre-LayerNorm blocks (``attention.ln`` before self-attention, ``ln`` before the
  feed-forward, a final ``encoder.ln``), no embedding LayerNorm;
- rotary position embeddings on queries and keys over the whole head, in interleaved pairs
  (``(x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin)``), base 10000; no absolute position table;
- token-type embeddings that are also the mode: type 0 is bidirectional (understanding, as
  FengShen tells users to set for NLU), type 1 is causal (generation). A BERT pair's segment ids
  therefore never reach the model: the mode decides the types.
- the LM head of the released usage: hidden states times the word-embedding matrix (tied, no
  transform, no bias), the same head for masked and causal LM.

Module names are FengShen's (``bert.embeddings.word_embeddings``, ``bert.encoder.layer.N.attention
.self.query``, ...), so the mapping to and from a released state dict (:func:`from_fengshen`,
:func:`to_fengshen`) only moves the ``bert.`` prefix and FengShen's derived buffers.

Two deliberate differences from FengShen's Hugging Face port, both where the port disagrees with
how the weights were trained (Megatron fills masked scores with a large negative number):
the port *adds* its boolean mask to the scores (+1 on hidden positions instead of hiding them),
and with a key/value cache it restarts the query's rotary positions at 0. Here hidden positions
are hidden and cached generation keeps absolute positions, so a cached step gives the same logits
as the full forward (tests/test_zhouwenwang.py).

The classes register with transformers' Auto classes when fs_ray is imported (``fs_ray.models``),
so an export loads with ``AutoModelForMaskedLM`` / ``AutoModelForCausalLM`` / ``AutoModel`` and no
remote code.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.utils.checkpoint
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    CausalLMOutputWithPast,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

MODEL_TYPE = "zhouwenwang"


@strict
class ZhouwenwangConfig(PreTrainedConfig):
    """A RoFormer encoder's shape; field names are FengShen's ``RoFormerConfig``'s (and BERT's).

    ``max_position_embeddings`` is the longest input the model is used with (rotary positions
    have no table; fs_ray's plans check inputs against it)."""

    model_type = MODEL_TYPE

    vocab_size: int = 21128
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    rope_theta: float | int = 10000.0
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    use_cache: bool = True
    tie_word_embeddings: bool = True

    def validate_architecture(self):
        """Part of ``@strict`` validation: a shape the rotary, unified network can run."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(
                f"head size {self.hidden_size // self.num_attention_heads} must be even for rotary positions"
            )
        if self.type_vocab_size < 2:
            raise ValueError("type_vocab_size must be at least 2: type 0 is bidirectional, type 1 causal")


# ---------------------------------------------------------------------------------------------
# rotary positions and the unified mask
# ---------------------------------------------------------------------------------------------
def rotary_tables(
    positions: torch.Tensor, head_size: int, theta: float, dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, (T, head_size), each frequency repeated for its pair (FengShen's layout)."""
    inv_freq = torch.exp(
        torch.arange(0, head_size, 2, device=positions.device, dtype=torch.float32)
        * (-math.log(theta) / head_size)
    )
    angles = torch.outer(positions.float(), inv_freq)
    cos = angles.cos().repeat_interleave(2, dim=-1)
    sin = angles.sin().repeat_interleave(2, dim=-1)
    return cos.to(dtype), sin.to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of the last dimension of ``x`` (..., T, D) by the tables."""
    pairs = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).reshape_as(x)
    return x * cos + pairs * sin


def unified_mask(causal: torch.Tensor, key_valid: torch.Tensor, past: int, length: int) -> torch.Tensor:
    """Which keys each query may see, (B, 1, T, past + T), True = visible.

    ``causal`` (B,) picks the mode per row: causal rows see keys up to their own position,
    bidirectional rows see every key; padding keys (``key_valid`` False) are hidden either way,
    except that every position sees itself (a padding row must not be all hidden)."""
    device = key_valid.device
    q_pos = torch.arange(past, past + length, device=device)
    k_pos = torch.arange(past + length, device=device)
    earlier = k_pos[None, :] <= q_pos[:, None]  # (T, S)
    seen = torch.where(causal[:, None, None], earlier[None], torch.ones_like(earlier)[None])
    seen = seen & key_valid[:, None, :].bool()
    seen = seen | (k_pos[None, :] == q_pos[:, None])[None]
    return seen[:, None]


# ---------------------------------------------------------------------------------------------
# modules (FengShen's names)
# ---------------------------------------------------------------------------------------------
class ZhouwenwangEmbeddings(nn.Module):
    def __init__(self, config: ZhouwenwangConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, input_ids: torch.Tensor | None, token_type_ids: torch.Tensor, inputs_embeds=None
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        return self.dropout(inputs_embeds + self.token_type_embeddings(token_type_ids))


class ZhouwenwangSelfAttention(nn.Module):
    def __init__(self, config: ZhouwenwangConfig, layer_idx: int):
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob
        self.layer_idx = layer_idx

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_attention_heads, self.attention_head_size).transpose(1, 2)

    def forward(self, hidden, mask, cos, sin, cache: Cache | None = None) -> torch.Tensor:
        q = apply_rotary(self._heads(self.query(hidden)), cos, sin)
        k = apply_rotary(self._heads(self.key(hidden)), cos, sin)
        v = self._heads(self.value(hidden))
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0
        )
        b, _, t, _ = out.shape
        return out.transpose(1, 2).reshape(b, t, -1)


class ZhouwenwangSelfOutput(nn.Module):
    def __init__(self, config: ZhouwenwangConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden, residual):
        return residual + self.dropout(self.dense(hidden))


class ZhouwenwangAttention(nn.Module):
    def __init__(self, config: ZhouwenwangConfig, layer_idx: int):
        super().__init__()
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self = ZhouwenwangSelfAttention(config, layer_idx)
        self.output = ZhouwenwangSelfOutput(config)

    def forward(self, hidden, mask, cos, sin, cache=None):
        return self.output(self.self(self.ln(hidden), mask, cos, sin, cache), hidden)


class ZhouwenwangIntermediate(nn.Module):
    def __init__(self, config: ZhouwenwangConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden):
        return self.intermediate_act_fn(self.dense(hidden))


class ZhouwenwangOutput(nn.Module):
    def __init__(self, config: ZhouwenwangConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden, residual):
        return residual + self.dropout(self.dense(hidden))


class ZhouwenwangLayer(nn.Module):
    def __init__(self, config: ZhouwenwangConfig, layer_idx: int):
        super().__init__()
        self.attention = ZhouwenwangAttention(config, layer_idx)
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = ZhouwenwangIntermediate(config)
        self.output = ZhouwenwangOutput(config)

    def forward(self, hidden, mask, cos, sin, cache=None):
        hidden = self.attention(hidden, mask, cos, sin, cache)
        return self.output(self.intermediate(self.ln(hidden)), hidden)


class ZhouwenwangEncoder(nn.Module):
    def __init__(self, config: ZhouwenwangConfig):
        super().__init__()
        self.layer = nn.ModuleList([ZhouwenwangLayer(config, i) for i in range(config.num_hidden_layers)])
        self.ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False

    def forward(self, hidden, mask, cos, sin, cache=None, output_hidden_states=False):
        states = []
        for layer in self.layer:
            if output_hidden_states:
                states.append(hidden)
            if self.gradient_checkpointing and self.training and cache is None:
                hidden = torch.utils.checkpoint.checkpoint(layer, hidden, mask, cos, sin, use_reentrant=False)
            else:
                hidden = layer(hidden, mask, cos, sin, cache)
        hidden = self.ln(hidden)
        if output_hidden_states:
            states.append(hidden)
        return hidden, tuple(states) if output_hidden_states else None


class ZhouwenwangPooler(nn.Module):
    def __init__(self, config: ZhouwenwangConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden):
        return self.activation(self.dense(hidden[:, 0]))


class ZhouwenwangPreTrainedModel(PreTrainedModel):
    config_class = ZhouwenwangConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["ZhouwenwangLayer"]
    _supports_sdpa = True



def _mode(causal, batch: int, device) -> torch.Tensor:
    """(B,) bool from a bool, a (B,) tensor or None (bidirectional)."""
    if causal is None or isinstance(causal, bool):
        return torch.full((batch,), bool(causal), dtype=torch.bool, device=device)
    return causal.to(device=device, dtype=torch.bool).reshape(batch)


class ZhouwenwangModel(ZhouwenwangPreTrainedModel):
    """The encoder. ``causal`` (a bool, or one per row) chooses the mode; ``token_type_ids`` is
    accepted for the Hugging Face call convention and ignored: the mode is the token type."""

    def __init__(self, config: ZhouwenwangConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = ZhouwenwangEmbeddings(config)
        self.encoder = ZhouwenwangEncoder(config)
        self.pooler = ZhouwenwangPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        causal: bool | torch.Tensor | None = False,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPoolingAndCrossAttentions:
        del token_type_ids, position_ids  # the mode decides the types; rotary positions are relative
        cache = kwargs.pop("past_key_values", cache)
        ref = input_ids if input_ids is not None else inputs_embeds
        batch, length = ref.shape[:2]
        device = ref.device
        past = cache.get_seq_length() if cache is not None else 0
        mode = _mode(causal, batch, device)
        if attention_mask is None:
            attention_mask = torch.ones(batch, past + length, dtype=torch.long, device=device)
        elif attention_mask.shape[-1] == length and past:
            attention_mask = torch.cat(
                [torch.ones(batch, past, dtype=attention_mask.dtype, device=device), attention_mask], dim=-1
            )
        types = mode.long()[:, None].expand(batch, length)
        hidden = self.embeddings(input_ids, types, inputs_embeds)
        head = self.config.hidden_size // self.config.num_attention_heads
        positions = torch.arange(past, past + length, device=device)
        cos, sin = rotary_tables(positions, head, self.config.rope_theta, hidden.dtype)
        mask = unified_mask(mode, attention_mask, past, length)
        hidden, states = self.encoder(hidden, mask, cos, sin, cache, bool(output_hidden_states))
        pooled = self.pooler(hidden) if self.pooler is not None else None
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=hidden, pooler_output=pooled, cache=cache, hidden_states=states
        )


class ZhouwenwangLMHead(nn.Module):
    """The released usage's head: hidden states times the (tied) word embeddings."""

    def __init__(self, config: ZhouwenwangConfig):
        super().__init__()
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, hidden):
        return self.decoder(hidden)


class _ZhouwenwangLM(ZhouwenwangPreTrainedModel):
    _tied_weights_keys: ClassVar[dict[str, str]] = {
        "cls.decoder.weight": "bert.embeddings.word_embeddings.weight"
    }

    def __init__(self, config: ZhouwenwangConfig):
        super().__init__(config)
        self.bert = ZhouwenwangModel(config, add_pooling_layer=False)
        self.cls = ZhouwenwangLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.decoder = new_embeddings


class ZhouwenwangForMaskedLM(_ZhouwenwangLM):
    """Masked LM (bidirectional unless ``causal`` says otherwise, per row for the unified objective)."""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        causal=False,
        inputs_embeds=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ) -> MaskedLMOutput:
        out = self.bert(
            input_ids,
            attention_mask,
            inputs_embeds=inputs_embeds,
            causal=causal,
            output_hidden_states=output_hidden_states,
        )
        logits = self.cls(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
            )
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


class ZhouwenwangForCausalLM(_ZhouwenwangLM, GenerationMixin):
    """Causal LM over the same weights (token type 1 everywhere), with a key/value cache."""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        cache: Cache | None = None,
        use_cache=None,
        labels=None,
        inputs_embeds=None,
        output_hidden_states=None,
        return_dict=None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        cache = kwargs.pop("past_key_values", cache)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None and labels is None:
            cache = DynamicCache(config=self.config)
        out = self.bert(
            input_ids,
            attention_mask,
            inputs_embeds=inputs_embeds,
            causal=True,
            cache=cache if use_cache or cache is not None else None,
            output_hidden_states=output_hidden_states,
        )
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.cls(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=out.cache, hidden_states=out.hidden_states
        )


class ZhouwenwangForSequenceClassification(ZhouwenwangPreTrainedModel):
    """Pooled [CLS] -> dropout -> linear, bidirectional (token types 0, as FengShen's NLU recipe)."""

    def __init__(self, config: ZhouwenwangConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = ZhouwenwangModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        inputs_embeds=None,
        **kwargs,
    ):
        out = self.bert(input_ids, attention_mask, inputs_embeds=inputs_embeds)
        logits = self.classifier(self.dropout(out.pooler_output))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = nn.functional.cross_entropy(logits.float(), labels.reshape(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)


class ZhouwenwangForTokenClassification(ZhouwenwangPreTrainedModel):
    def __init__(self, config: ZhouwenwangConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = ZhouwenwangModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        inputs_embeds=None,
        **kwargs,
    ):
        out = self.bert(input_ids, attention_mask, inputs_embeds=inputs_embeds)
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, self.num_labels).float(), labels.reshape(-1)
            )
        return TokenClassifierOutput(loss=loss, logits=logits)


class ZhouwenwangForMultipleChoice(ZhouwenwangPreTrainedModel):
    def __init__(self, config: ZhouwenwangConfig):
        super().__init__(config)
        self.bert = ZhouwenwangModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        choices = input_ids.shape[1]
        flat_mask = (
            attention_mask.reshape(-1, attention_mask.shape[-1]) if attention_mask is not None else None
        )
        out = self.bert(input_ids.reshape(-1, input_ids.shape[-1]), flat_mask)
        logits = self.classifier(self.dropout(out.pooler_output)).reshape(-1, choices)
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return MultipleChoiceModelOutput(loss=loss, logits=logits)


AUTO_CLASSES = {
    "AutoModel": ZhouwenwangModel,
    "AutoModelForMaskedLM": ZhouwenwangForMaskedLM,
    "AutoModelForCausalLM": ZhouwenwangForCausalLM,
    "AutoModelForSequenceClassification": ZhouwenwangForSequenceClassification,
    "AutoModelForTokenClassification": ZhouwenwangForTokenClassification,
    "AutoModelForMultipleChoice": ZhouwenwangForMultipleChoice,
}


def register() -> None:
    """Make ``model_type: zhouwenwang`` folders load through transformers' Auto classes."""
    import transformers

    transformers.AutoConfig.register(MODEL_TYPE, ZhouwenwangConfig, exist_ok=True)
    for auto, cls in AUTO_CLASSES.items():
        getattr(transformers, auto).register(ZhouwenwangConfig, cls, exist_ok=True)


register()  # importing this module directly registers it too (idempotent)


# ---------------------------------------------------------------------------------------------
# the released layout (FengShen's RoFormerModel state dict, a megatron-bert config.json)
# ---------------------------------------------------------------------------------------------
# config.json fields of a released folder that carry over (the rest are FengShen/Megatron
# bookkeeping that the network does not read)
CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
)
PREFIX = "bert."
# FengShen buffers derived from the shape; recomputed, never loaded
_DERIVED = ("embeddings.position_ids", ".rope_emb.div_term")
# what a FengShen state dict may carry that this network has no place for
_UNUSED = ("cls.seq_relationship.",)


def config_from_fengshen(cfg: dict[str, Any]) -> ZhouwenwangConfig:
    return ZhouwenwangConfig(**{k: cfg[k] for k in CONFIG_FIELDS if cfg.get(k) is not None})


def config_to_fengshen(config: ZhouwenwangConfig) -> dict[str, Any]:
    out = {k: getattr(config, k) for k in CONFIG_FIELDS}
    return {"model_type": "megatron-bert", **out}


def from_fengshen(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A released state dict (FengShen ``RoFormerModel`` keys, with or without ``bert.``) in this
    module's keys (always ``bert.``-prefixed). Raises on a head this network cannot reproduce."""
    out = {}
    for key, value in state.items():
        if any(d in key for d in _DERIVED) or key.startswith(_UNUSED):
            continue
        if key.startswith("cls.predictions."):
            if key in ("cls.predictions.decoder.weight",):
                continue  # tied to the word embeddings, as the released usage computes it
            raise ValueError(
                f"{key}: a BERT-style prediction head (transform/bias), which the released Zhouwenwang "
                "checkpoints do not have and this network does not reproduce"
            )
        out[key if key.startswith(PREFIX) else PREFIX + key] = value
    return out


def to_fengshen(state: dict[str, torch.Tensor], config: ZhouwenwangConfig) -> dict[str, torch.Tensor]:
    """This module's state dict in the released layout: FengShen ``RoFormerModel`` keys (no
    prefix, no head: the LM head is the word embeddings) plus FengShen's derived buffers, so
    FengShen's own class loads it without missing keys."""
    out = {}
    for key, value in state.items():
        if not key.startswith(PREFIX):
            continue  # heads: the tied LM head, or a task head FengShen's encoder has no place for
        out[key[len(PREFIX) :]] = value
    head = config.hidden_size // config.num_attention_heads
    div_term = torch.exp(torch.arange(0, head, 2).float() * (-math.log(config.rope_theta) / head))
    for i in range(config.num_hidden_layers):
        out[f"encoder.layer.{i}.attention.self.rope_emb.div_term"] = div_term.clone()
    out["embeddings.position_ids"] = torch.arange(config.max_position_embeddings).expand((1, -1)).clone()
    return out


def is_fengshen_layout(keys) -> bool:
    """A RoFormer in FengShen's names: pre-LN attention blocks and no absolute position table."""
    keys = list(keys)
    has_block = any(k.endswith("encoder.layer.0.attention.ln.weight") for k in keys)
    return has_block and not any("position_embeddings" in k for k in keys)


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _weights_file(folder: str) -> str | None:
    import os

    return next(
        (os.path.join(folder, n) for n in WEIGHT_FILES if os.path.isfile(os.path.join(folder, n))), None
    )


def _state(path: str, keys_only: bool = False):
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return list(f.keys()) if keys_only else {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return list(state) if keys_only else state


def released_layout(folder: str) -> bool:
    """Whether ``folder`` holds a released Zhouwenwang (FengShen RoFormer names, a config whose
    ``model_type`` transformers would read as another architecture)."""
    import json
    import os

    path = os.path.join(folder, "config.json")
    weights = _weights_file(folder)
    if weights is None or not os.path.isfile(path):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            if json.load(f).get("model_type") == MODEL_TYPE:
                return False  # an fs_ray export: transformers loads it as it is
        return is_fengshen_layout(_state(weights, keys_only=True))
    except Exception:  # unreadable here (e.g. a legacy non-zip .bin): not for this check to decide
        return False


def load_released(folder: str, auto_class: str, **config_kwargs: Any):
    """A released Zhouwenwang folder as ``auto_class``'s fs_ray model: its config.json read into
    :class:`ZhouwenwangConfig`, its FengShen state dict mapped by :func:`from_fengshen`. Every
    encoder weight must be there; only a task head (not in a released folder) starts fresh."""
    import json
    import os

    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = config_from_fengshen(json.load(f))
    for key, value in config_kwargs.items():
        setattr(config, key, value)
    model = AUTO_CLASSES[auto_class](config)
    state = from_fengshen(_state(_weights_file(folder)))
    if auto_class == "AutoModel":  # the encoder itself: its keys carry no prefix
        state = {k.removeprefix(PREFIX): v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    head_only = ("classifier.", "cls.decoder.weight")
    missing = [k for k in result.missing_keys if not k.startswith(head_only)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(("bert.pooler.", "pooler."))]
    if missing or unexpected:
        raise ValueError(
            f"{folder}: not a Zhouwenwang layout this shape can load (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    model.tie_weights()
    return model.eval()
