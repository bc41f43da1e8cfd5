"""Bigan 比干: FengShen's Transformer-XL-denoise, a decoder-only Transformer-XL that corrects text by
rewriting it (``“{noisy}”改写后是“`` ... ``”``).

The network is the one FengShen's ``fengshen/models/transfo_xl_denoise`` defines and
Bigan-Transformer-XL-denoise-1.1B was saved from (Megatron's GPT-2 blocks with Transformer-XL's
relative attention):

- word embeddings, no absolute position table; sinusoidal embeddings of key distances
  (``[sin, cos]`` halves, base 10000) projected per layer (``attention.relative``), with the two
  learned biases ``transformer.r_w_bias`` (content) and ``transformer.r_r_bias`` (position) shared
  by all layers;
- pre-LayerNorm blocks (``input_layernorm``, fused ``query_key_value``, ``dense``,
  ``post_attention_layernorm``, ``mlp.dense_h_to_4h`` / ``dense_4h_to_h`` with tanh-GELU), a final
  LayerNorm (eps 1e-5), hidden scores masked to -10000 as Megatron does;
- logits = final hidden states times the word embeddings (tied);
- segment memory: each layer may attend to the previous segment's hidden states at its input
  (``mems``, at most ``max_memory_length``), which :meth:`TransfoXLDenoiseForCausalLM.forward`
  returns for the next segment; generation uses a key/value cache instead (the same attention
  over the same keys, without recomputing them).

Module names and config fields are FengShen's (``model_type: transfo_xl_denoise``, which
transformers does not define), so a released folder loads with ``from_pretrained`` as it is once
fs_ray is imported; ``architectures: [TransfoXLDenoiseModel]`` reads as a causal LM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.utils.checkpoint
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

MODEL_TYPE = "transfo_xl_denoise"
MASKED = -10000.0  # Megatron's fill for hidden scores (a finite value: no NaN on an all-padding row)


@strict
class TransfoXLDenoiseConfig(PreTrainedConfig):
    """FengShen's ``TransfoXLDenoiseConfig`` fields (Bigan-1.1B: 32 layers, 1600 wide, 25 heads,
    50,048 embeddings)."""

    model_type = MODEL_TYPE
    attribute_map: ClassVar[dict[str, str]] = {"num_hidden_layers": "num_layers"}

    num_layers: int = 32
    vocab_size: int = 50048
    hidden_size: int = 1600
    num_attention_heads: int = 25
    embedding_dropout_prob: float | int = 0.1
    attention_dropout_prob: float | int = 0.1
    output_dropout_prob: float | int = 0.1
    max_sequence_length: int = 512
    max_memory_length: int = 512
    checkpoint_activations: bool = False
    checkpoint_num_layers: int = 1
    parallel_output: bool = True
    relative_encoding: bool = True
    layernorm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    use_cache: bool = True
    tie_word_embeddings: bool = True

    def validate_architecture(self):
        """Part of ``@strict`` validation."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if not self.relative_encoding:
            raise ValueError(
                "relative_encoding: false (absolute positions) is not implemented; Bigan is relative"
            )


@dataclass
class TransfoXLDenoiseOutput(CausalLMOutputWithPast):
    """A causal-LM output plus ``mems``: each layer's input hidden states to remember for the next
    segment (the embeddings first, then every layer's output)."""

    mems: list[torch.Tensor] | None = None


def distance_embeddings(key_length: int, hidden: int, device, dtype) -> torch.Tensor:
    """(K, hidden): sinusoids of the distances K-1, ..., 1, 0 (FengShen's ``PositionalEmbedding``)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0.0, hidden, 2.0, device=device) / hidden))
    angles = torch.outer(torch.arange(key_length - 1, -1, -1.0, device=device), inv_freq)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI's tanh GELU, as Megatron's GPT-2 uses."""
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


class PositionalEmbedding(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.register_buffer("inv_freq", 1 / (10000 ** (torch.arange(0.0, hidden_size, 2.0) / hidden_size)))

    def forward(self, key_length: int, dtype) -> torch.Tensor:
        return distance_embeddings(key_length, self.hidden_size, self.inv_freq.device, dtype)


class GPT2SelfAttention(nn.Module):
    def __init__(self, config: TransfoXLDenoiseConfig, layer_idx: int):
        super().__init__()
        h = config.hidden_size
        self.heads = config.num_attention_heads
        self.head_size = h // self.heads
        self.layer_idx = layer_idx
        self.query_key_value = nn.Linear(h, 3 * h)
        self.relative = nn.Linear(h, h)
        self.attention_dropout = nn.Dropout(config.attention_dropout_prob)
        self.dense = nn.Linear(h, h)
        self.output_dropout = nn.Dropout(config.output_dropout_prob)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.heads, self.head_size).transpose(-3, -2)

    def forward(self, hidden, visible, distances, r_w_bias, r_r_bias, mem=None, cache: Cache | None = None):
        """``hidden`` (B, T, h) already normalised, ``mem`` (B, M, h) too; ``visible`` (B, 1, T, K)
        bool; ``distances`` (K, h) for the key distances K-1 ... 0."""
        length = hidden.shape[1]
        both = hidden if mem is None else torch.cat([mem, hidden], dim=1)
        q, k, v = self.query_key_value(both).chunk(3, dim=-1)
        q, k, v = self._heads(q[:, -length:]), self._heads(k), self._heads(v)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        keys = k.shape[2]
        rel = self._heads(self.relative(distances))  # (H, K, d): row c is distance K-1-c
        content = torch.matmul(q + r_w_bias[:, None], k.transpose(-1, -2))
        position = torch.matmul(q + r_r_bias[:, None], rel.transpose(-1, -2))
        # query t sits at key position K-T+t; key j is at distance K-T+t-j, i.e. row T-1-t+j of rel
        index = (torch.arange(length, 0, -1, device=q.device)[:, None] - 1) + torch.arange(
            keys, device=q.device
        )
        position = position.gather(-1, index.clamp(max=keys - 1).expand(*position.shape[:2], -1, -1))
        scores = (content + position) / math.sqrt(self.head_size)
        scores = scores.masked_fill(~visible, MASKED)
        probs = self.attention_dropout(scores.float().softmax(-1).to(v.dtype))
        out = torch.matmul(probs, v).transpose(1, 2).reshape(hidden.shape[0], length, -1)
        return self.output_dropout(self.dense(out))


class GPT2MLP(nn.Module):
    def __init__(self, config: TransfoXLDenoiseConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 4 * config.hidden_size)
        self.dense_4h_to_h = nn.Linear(4 * config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.output_dropout_prob)

    def forward(self, hidden):
        return self.dropout(self.dense_4h_to_h(gelu(self.dense_h_to_4h(hidden))))


class GPT2TransformerLayer(nn.Module):
    def __init__(self, config: TransfoXLDenoiseConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.attention = GPT2SelfAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = GPT2MLP(config)

    def forward(self, hidden, visible, distances, r_w_bias, r_r_bias, mem=None, cache=None):
        mem = self.input_layernorm(mem) if mem is not None else None
        hidden = hidden + self.attention(
            self.input_layernorm(hidden), visible, distances, r_w_bias, r_r_bias, mem, cache
        )
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class GPT2Transformer(nn.Module):
    def __init__(self, config: TransfoXLDenoiseConfig):
        super().__init__()
        self.max_memory_length = config.max_memory_length
        self.embedding_dropout = nn.Dropout(config.embedding_dropout_prob)
        self.position_embeddings = PositionalEmbedding(config.hidden_size)
        head = config.hidden_size // config.num_attention_heads
        self.r_w_bias = nn.Parameter(torch.zeros(config.num_attention_heads, head))
        self.r_r_bias = nn.Parameter(torch.zeros(config.num_attention_heads, head))
        self.layers = nn.ModuleList([GPT2TransformerLayer(config, i) for i in range(config.num_layers)])
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.gradient_checkpointing = False

    def forward(self, hidden, visible, mems=None, cache=None):
        keys = visible.shape[-1]
        distances = self.embedding_dropout(self.position_embeddings(keys, hidden.dtype))
        hidden = self.embedding_dropout(hidden)
        inputs = [hidden.detach()]
        checkpoint = self.gradient_checkpointing and self.training and not mems and cache is None
        for i, layer in enumerate(self.layers):
            if checkpoint:  # activation checkpointing: recompute each layer in the backward pass
                hidden = torch.utils.checkpoint.checkpoint(
                    layer, hidden, visible, distances, self.r_w_bias, self.r_r_bias, use_reentrant=False
                )
            else:
                hidden = layer(
                    hidden, visible, distances, self.r_w_bias, self.r_r_bias, mems[i] if mems else None, cache
                )
            inputs.append(hidden.detach())
        return self.final_layernorm(hidden), self._update(inputs, mems)

    def _update(self, inputs: list[torch.Tensor], mems) -> list[torch.Tensor] | None:
        if self.max_memory_length <= 0:
            return None
        if mems:
            inputs = [torch.cat([m, x], dim=1) for m, x in zip(mems, inputs, strict=True)]
        return [x[:, -self.max_memory_length :] for x in inputs]


class TransfoXLDenoisePreTrainedModel(PreTrainedModel):
    config_class = TransfoXLDenoiseConfig
    base_model_prefix = "transfo_xl_denoise"  # FengShen's; the model is its own base
    supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["GPT2TransformerLayer"]
    _tied_weights_keys: ClassVar[dict[str, str]] = {}

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, GPT2Transformer):
            from transformers import initialization as init

            init.zeros_(module.r_w_bias)
            init.zeros_(module.r_r_bias)


class TransfoXLDenoiseForCausalLM(TransfoXLDenoisePreTrainedModel, GenerationMixin):
    """The Bigan decoder. ``attention_mask`` (B, [past +] T) marks padding; ``mems`` continues a
    previous segment (Transformer-XL recurrence); ``cache`` is the key/value cache of generation."""

    def __init__(self, config: TransfoXLDenoiseConfig):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.transformer = GPT2Transformer(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.word_embeddings

    def set_input_embeddings(self, value):
        self.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        mems: list[torch.Tensor] | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        position_ids=None,
        token_type_ids=None,
        return_dict=None,
        **kwargs: Any,
    ) -> TransfoXLDenoiseOutput:
        cache = kwargs.pop("past_key_values", cache)
        if mems and cache is not None:
            raise ValueError("mems (segment recurrence) and cache (generation) cannot be combined")
        hidden = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length = hidden.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None and labels is None and not mems:
            cache = DynamicCache(config=self.config)
        past = mems[0].shape[1] if mems else (cache.get_seq_length() if cache is not None else 0)
        keys = past + length
        valid = torch.ones(batch, keys, dtype=torch.bool, device=hidden.device)
        if attention_mask is not None:
            valid[:, keys - attention_mask.shape[-1] :] = attention_mask.bool()
        q_pos = torch.arange(past, keys, device=hidden.device)
        k_pos = torch.arange(keys, device=hidden.device)
        earlier = k_pos[None, :] <= q_pos[:, None]
        visible = (earlier[None] & valid[:, None, :]) | (k_pos[None, :] == q_pos[:, None])[None]
        out, new_mems = self.transformer(
            hidden, visible[:, None], mems, cache if use_cache or cache else None
        )
        if logits_to_keep:
            out = out[:, -logits_to_keep:]
        logits = nn.functional.linear(out, self.word_embeddings.weight)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return TransfoXLDenoiseOutput(loss=loss, logits=logits, cache=cache, mems=new_mems)


def register() -> None:
    """Make ``model_type: transfo_xl_denoise`` folders load through transformers' Auto classes."""
    import transformers

    transformers.AutoConfig.register(MODEL_TYPE, TransfoXLDenoiseConfig, exist_ok=True)
    transformers.AutoModelForCausalLM.register(
        TransfoXLDenoiseConfig, TransfoXLDenoiseForCausalLM, exist_ok=True
    )


register()  # importing this module directly registers it too (idempotent)
