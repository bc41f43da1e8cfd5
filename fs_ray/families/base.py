"""What a model family is: its presets, how it builds its Hugging Face config, and what it can do.

A family module (``erlangshen.py``, ``wenzhong.py``, ...) makes one :class:`Family` and the
registry in ``fs_ray/families/__init__.py`` lists it. Nothing outside the families reads a
family's name: the objectives, methods and serving operations it names are looked up in their
own registries (:mod:`fs_ray.objectives`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    """A named shape. ``published`` names the released checkpoint it reproduces; ``params`` is that
    checkpoint's published parameter count, which the preset's own count (its masked-LM, LM or
    seq2seq model on the meta device) matches within ``tolerance`` (tests/test_families.py)."""

    shape: dict[str, Any]
    published: str | None = None
    params: int | None = None
    tolerance: float = 0.05


@dataclass(frozen=True)
class Family:
    name: str
    summary: str
    presets: dict[str, Preset]
    # (shape with vocab_size, seq_len, special ids) -> a transformers PretrainedConfig
    build_config: Callable[[dict[str, Any], int, dict[str, Any]], Any]
    objectives: tuple[str, ...]  # pretraining objectives it supports; the first is the default
    methods: tuple[str, ...] = ()  # fine-tuning methods (empty: not fine-tuned by fs_ray)
    operations: tuple[str, ...] = ()  # serving operations its exports offer
    model_types: tuple[str, ...] = ()  # Hugging Face ``model_type`` values of its checkpoints
    tokenizer: str = "bert-chinese"  # tokenizer.source its corpora are prepared with by default
    # applied to a model built from a config (a new run, or export rebuilding a checkpoint)
    after_build: Callable[[Any], Any] | None = None
    # (tokenizer folder, tokenizers.Tokenizer) -> sentinel ids of a released layout whose vocabulary
    # has no literal <extra_id_N> tokens (empty when the folder is not such a layout)
    sentinels: Callable[[str, Any], tuple[int, ...]] | None = None
    # tokenizer.source names the family brings (name -> () -> tokenizers.Tokenizer)
    tokenizers: dict[str, Callable[[], Any]] = field(default_factory=dict)
    # folder -> its tokenizer, for released layouts that tokenizer.json / vocab.txt alone would
    # misread (None: not such a folder)
    folder_tokenizer: Callable[[str], Any] | None = None
    # folder -> whether it holds this family's released layout, which its config.json's
    # model_type would send to another architecture (Zhouwenwang's megatron-bert folders)
    released_layout: Callable[[str], bool] | None = None
    # (folder, auto_class, **config overrides) -> the model, for a folder released_layout claims
    load_released: Callable[..., Any] | None = None
    released_auto_classes: tuple[str, ...] = ()  # the Auto classes load_released can build
    # architecture names of released config.json files that say nothing of their head, and what
    # fs_ray reads them as (Bigan's TransfoXLDenoiseModel is a causal LM)
    architecture_kinds: dict[str, str] = field(default_factory=dict)
    # model -> the parameters a preset's published count names (None: the whole model); Taiyi's
    # 102M/326M name the text tower alone
    published_params: Callable[[Any], int] | None = None

    @property
    def default_objective(self) -> str:
        return self.objectives[0]

    def check_preset(self, preset: str) -> None:
        if preset not in self.presets:
            raise ValueError(f"{preset!r} is not a {self.name} preset ({', '.join(self.presets)})")

    def build(self, auto_class: str, config):
        """``auto_class.from_config(config)``, finished the family's way (:attr:`after_build`)."""
        import transformers

        from fs_ray.models import register

        register()

        model = getattr(transformers, auto_class).from_config(config)
        return self.after_build(model) if self.after_build else model

    def config(
        self,
        preset: str,
        vocab_size: int = 0,
        seq_len: int = 0,
        special: dict[str, Any] | None = None,
        overrides: dict[str, Any] | None = None,
    ):
        """The Hugging Face config of ``preset``; the vocabulary grows to ``vocab_size`` when the
        corpus's is larger than the preset's own (a published shape keeps its vocabulary)."""
        self.check_preset(preset)
        shape = {**self.presets[preset].shape, **(overrides or {})}
        shape["vocab_size"] = max(int(shape.get("vocab_size", 0)), vocab_size)
        if not shape["vocab_size"]:
            raise ValueError(
                f"{self.name}/{preset}: no vocab_size (the preset has none and no corpus gave one)"
            )
        return self.build_config(shape, seq_len, special or {})


def encoder_decoder(shape: dict[str, Any], seq_len: int) -> dict[str, Any]:
    """BART-style config fields from a preset's ``layers``/``heads``/``ffn`` (the same for encoder
    and decoder) and the rest of its shape; positions at least ``seq_len``."""
    shape = dict(shape)
    layers, heads, ffn = shape.pop("layers"), shape.pop("heads"), shape.pop("ffn")
    shape["max_position_embeddings"] = max(int(shape.get("max_position_embeddings", 0)), seq_len)
    return {
        "encoder_layers": layers,
        "decoder_layers": layers,
        "encoder_attention_heads": heads,
        "decoder_attention_heads": heads,
        "encoder_ffn_dim": ffn,
        "decoder_ffn_dim": ffn,
        **shape,
    }


def doc_end(special: dict[str, Any]) -> int | None:
    """The id that ends a document in a corpus prepared with ``special`` ([SEP], else </s>)."""
    return special.get("sep") if special.get("sep") is not None else special.get("eos")
