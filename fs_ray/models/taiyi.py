"""Taiyi 太乙: a Chinese CLIP — a BERT-family text tower and a ViT image tower meeting in one space.

The layout is the one the released Taiyi-CLIP-Roberta-102M/326M-Chinese checkpoints are used in:

- the **text tower** is a ``BertForSequenceClassification`` whose ``num_labels`` (512) "labels"
  are the projection: the text feature is its ``logits`` — the pooler (dense + tanh on [CLS]),
  then the classifier (a linear layer with bias) — exactly what Taiyi's own usage code calls;
- the **image tower** is an openai CLIP ViT (``CLIPVisionModelWithProjection``: the vision
  transformer, its pooled post-LayerNorm [CLS] and ``visual_projection`` without bias), loaded
  from an openai CLIP folder (``vision_model.*``, ``visual_projection.weight``) as Taiyi did;
- a learnable temperature ``logit_scale`` (log of the scale, initialised to log(1/0.07) and
  capped at log(100) when used, as CLIP caps it).

Saved (``save_pretrained``) as a folder whose ``text/`` loads with
``BertForSequenceClassification.from_pretrained`` where Taiyi's text checkpoint does and whose
``vision/`` loads with ``CLIPVisionModelWithProjection.from_pretrained`` where openai's CLIP folder
does, plus a top-level ``config.json`` (``model_type: taiyi_clip``, the trained ``logit_scale``)
so ``AutoModel.from_pretrained(folder)`` rebuilds the pair with no remote code. One copy of the
weights. :func:`from_released` builds the pair from a released text folder and a CLIP folder.

``freeze_vision`` (Taiyi's recipe: train the text tower against a frozen CLIP image tower) turns
the image tower's gradients off and keeps it in eval mode.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.utils import ModelOutput

MODEL_TYPE = "taiyi_clip"
TEXT_DIR, VISION_DIR = "text", "vision"
LOGIT_SCALE_INIT = math.log(1 / 0.07)  # 2.6592, CLIP's
LOGIT_SCALE_MAX = math.log(100.0)  # CLIP clamps the scale at 100


@strict
class TaiyiConfig(PreTrainedConfig):
    """The pair's shape: ``text_config`` (a BERT config), ``vision_config`` (a CLIP vision
    config), the shared ``projection_dim``, the temperature and the freezing switch."""

    model_type = MODEL_TYPE
    sub_configs_defaults: ClassVar = {"text_config": BertConfig, "vision_config": CLIPVisionConfig}

    text_config: dict | BertConfig | None = None
    vision_config: dict | CLIPVisionConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float | int = LOGIT_SCALE_INIT
    logit_scale_max: float | int = LOGIT_SCALE_MAX
    freeze_vision: bool = False
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        text_given = self.text_config is not None
        super().__post_init__(**kwargs)
        if not text_given:  # a default text tower projects to projection_dim
            self.text_config.num_labels = self.projection_dim

    def validate_architecture(self):
        """Part of ``@strict`` validation: both towers project to ``projection_dim``."""
        vision = self.vision_config
        if (
            vision is not None
            and getattr(vision, "projection_dim", self.projection_dim) != self.projection_dim
        ):
            raise ValueError(
                f"vision_config.projection_dim {vision.projection_dim} != projection_dim {self.projection_dim}"
            )
        if self.text_config is not None and self.text_config.num_labels != self.projection_dim:
            raise ValueError(
                f"text_config.num_labels {self.text_config.num_labels} (the text projection) != "
                f"projection_dim {self.projection_dim}"
            )


def make_config(
    text: dict[str, Any], vision: dict[str, Any], projection_dim: int, **more: Any
) -> TaiyiConfig:
    """A :class:`TaiyiConfig` from plain dicts of the two towers' fields."""
    text_config = BertConfig(**text)
    text_config.num_labels = projection_dim
    vision_config = CLIPVisionConfig(**{**vision, "projection_dim": projection_dim})
    return TaiyiConfig(
        text_config=text_config, vision_config=vision_config, projection_dim=projection_dim, **more
    )


@dataclass
class TaiyiOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # logits_per_text, what export re-runs to verify itself
    logits_per_text: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None


class TaiyiModel(PreTrainedModel):
    """The dual encoder. ``get_text_features`` / ``get_image_features`` give unnormalised
    projections (Taiyi's usage normalises them itself); ``forward`` with both inputs gives the
    normalised embeddings, the scaled similarity logits and, with ``return_loss``, the symmetric
    InfoNCE loss over the batch (:func:`fs_ray.objectives.losses.contrastive_loss`, which also
    spans every rank of a distributed run)."""

    config_class = TaiyiConfig
    base_model_prefix = "taiyi"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True

    def __init__(self, config: TaiyiConfig):
        super().__init__(config)
        self.text_model = BertForSequenceClassification(config.text_config)
        self.vision_model = CLIPVisionModelWithProjection(config.vision_config)
        # shape (1,), not CLIP's 0-dim scalar: DeepSpeed's initial broadcast views every parameter
        # as bytes, which a 0-dim tensor cannot be
        self.logit_scale = nn.Parameter(torch.tensor([float(config.logit_scale_init_value)]))
        self.post_init()
        if config.freeze_vision:
            self.freeze_vision()

    def _init_weights(self, module):
        # each tower initialised itself in its constructor (its own post_init); only the
        # temperature is the pair's own
        if module is self:
            with torch.no_grad():
                self.logit_scale.fill_(float(self.config.logit_scale_init_value))

    def freeze_vision(self) -> None:
        self.config.freeze_vision = True
        self.vision_model.requires_grad_(False)
        self.vision_model.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_vision:
            self.vision_model.eval()  # a frozen tower keeps its eval-mode behaviour (no dropout)
        return self

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    def get_text_features(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).logits

    def get_image_features(self, pixel_values) -> torch.Tensor:
        return self.vision_model(pixel_values=pixel_values).image_embeds

    def scale(self) -> torch.Tensor:
        """exp of the temperature, its value capped at ``logit_scale_max`` as CLIP caps it (CLIP
        clamps the parameter after each step); the gradient passes the cap unchanged, so a
        temperature pushed past it can come back (a plain clamp would give it none)."""
        raw = self.logit_scale.float().squeeze()
        over = (raw - float(self.config.logit_scale_max)).clamp(min=0).detach()
        return (raw - over).exp()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_loss: bool = False,
        **_: Any,
    ) -> TaiyiOutput:
        from fs_ray.objectives.losses import contrastive_loss

        text = image = None
        if input_ids is not None:
            text = nn.functional.normalize(
                self.get_text_features(input_ids, attention_mask, token_type_ids), dim=-1
            )
        if pixel_values is not None:
            image = nn.functional.normalize(self.get_image_features(pixel_values), dim=-1)
        if text is None or image is None:
            return TaiyiOutput(text_embeds=text, image_embeds=image)
        scale = self.scale()
        logits_per_text = scale * text @ image.t()
        loss = contrastive_loss(text, image, scale) if return_loss else None
        return TaiyiOutput(
            loss=loss,
            logits=logits_per_text,
            logits_per_text=logits_per_text,
            logits_per_image=logits_per_text.t(),
            text_embeds=text,
            image_embeds=image,
        )

    # -- the released layout on disk ------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, **kwargs):
        """``text/`` (Taiyi's text checkpoint layout), ``vision/`` (openai CLIP's vision tower
        with its projection) and the pair's ``config.json`` holding the trained temperature."""
        os.makedirs(save_directory, exist_ok=True)
        state_dict = kwargs.pop("state_dict", None)
        subs: dict[str, dict | None] = {TEXT_DIR: None, VISION_DIR: None}
        if state_dict is not None:  # e.g. gathered from ZeRO-3 shards by the caller
            for name in subs:
                prefix = f"{name}_model."
                subs[name] = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            stray = sorted(
                k
                for k in state_dict
                if k != "logit_scale" and not k.startswith(("text_model.", "vision_model."))
            )
            if stray or "logit_scale" not in state_dict:
                raise ValueError(
                    f"state_dict is not a TaiyiModel's: {stray[:3] or 'no logit_scale'} (unwrap the loss module first)"
                )
        elif self.logit_scale.numel() == 0:
            raise ValueError("the parameters are ZeRO-3 partitions: pass the gathered state_dict")
        for name, tower in ((TEXT_DIR, self.text_model), (VISION_DIR, self.vision_model)):
            tower.save_pretrained(os.path.join(save_directory, name), *args, state_dict=subs[name], **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        scale = state_dict["logit_scale"] if state_dict is not None else self.logit_scale
        config = self.config.to_dict()
        config["logit_scale_init_value"] = float(torch.as_tensor(scale).detach())
        config["architectures"] = [type(self).__name__]
        with open(os.path.join(save_directory, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """A folder :meth:`save_pretrained` wrote: the two towers from their subfolders, the
        temperature and switches from its ``config.json``, with keyword overrides (such as
        ``freeze_vision=True``) applied, also through ``AutoModel.from_pretrained``, which passes
        the config it read with them; ``dtype``/``device_map`` go to both towers."""
        folder = str(pretrained_model_name_or_path)
        config = kwargs.pop("config", None)
        if not isinstance(config, TaiyiConfig):
            config, kwargs = TaiyiConfig.from_pretrained(folder, return_unused_kwargs=True, **kwargs)
        load = {k: v for k, v in kwargs.items() if k in LOAD_KWARGS}  # hub plumbing (revision, ...) unused
        model = from_released(
            os.path.join(folder, TEXT_DIR),
            os.path.join(folder, VISION_DIR),
            **{k: getattr(config, k) for k in PAIR_FIELDS},
            **load,
        )
        if config.projection_dim != model.config.projection_dim:
            raise ValueError(
                f"projection_dim={config.projection_dim} asked, but the towers in {folder} project to "
                f"{model.config.projection_dim} (a shape comes from the weights, not from an override)"
            )
        return model


# the pair's own config fields (the towers' shapes come from their folders)
PAIR_FIELDS = ("logit_scale_init_value", "logit_scale_max", "freeze_vision", "initializer_range")
# keyword arguments passed through to both towers' from_pretrained
LOAD_KWARGS = ("dtype", "torch_dtype", "device_map", "low_cpu_mem_usage")


def from_released(text_folder: str, vision_folder: str, **more: Any) -> TaiyiModel:
    """The pair from Taiyi's released text tower (a ``BertForSequenceClassification`` folder
    whose ``num_labels`` is the projection size) and a CLIP folder (openai's
    ``clip-vit-base-patch32`` layout, or a ``vision/`` folder fs_ray saved). The CLIP folder's
    own ``logit_scale`` is the starting temperature where it has one."""
    load_kwargs = {k: more.pop(k) for k in LOAD_KWARGS if k in more}
    unknown = sorted(set(more) - set(PAIR_FIELDS))
    if unknown:
        raise TypeError(f"from_released does not take {unknown} (the towers' shapes come from their folders)")
    text = BertForSequenceClassification.from_pretrained(text_folder, **load_kwargs)
    config, whole_clip = vision_config(vision_folder)
    with _transformers_quiet(whole_clip):  # a whole CLIP folder's (English) text tower is not ours to load
        vision = CLIPVisionModelWithProjection.from_pretrained(vision_folder, config=config, **load_kwargs)
    if text.config.num_labels != vision.config.projection_dim:
        raise ValueError(
            f"{text_folder} projects text to {text.config.num_labels} dimensions (num_labels) but "
            f"{vision_folder} projects images to {vision.config.projection_dim}"
        )
    if "logit_scale_init_value" not in more:
        scale = _checkpoint_tensor(vision_folder, "logit_scale")
        if scale is not None:
            more["logit_scale_init_value"] = float(scale)
    config = TaiyiConfig(
        text_config=text.config,
        vision_config=vision.config,
        projection_dim=vision.config.projection_dim,
        **more,
    )
    with torch.device("meta"):
        model = TaiyiModel(config)
    model.text_model, model.vision_model = text, vision
    # the temperature stays fp32 on the text tower's device (bf16 would round 2.6592 to 2.6562)
    model.logit_scale = nn.Parameter(torch.tensor([float(config.logit_scale_init_value)], device=text.device))
    if config.freeze_vision:
        model.freeze_vision()
    return model.eval()


def vision_config(folder: str) -> tuple[CLIPVisionConfig, bool]:
    """The image tower's config of a CLIP folder, and whether the folder is a whole CLIP model
    (``model_type: clip``, whose ``projection_dim`` is on the pair, not on its ``vision_config``)
    rather than a vision tower alone."""
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        raw = json.load(f)
    config = CLIPVisionConfig.from_pretrained(folder)
    whole = raw.get("model_type") == "clip"
    if whole and raw.get("projection_dim") is not None:
        config.projection_dim = int(raw["projection_dim"])
    return config, whole


@contextlib.contextmanager
def _transformers_quiet(quiet: bool):
    """transformers' loading report lowered to errors while ``quiet``."""
    from transformers.utils import logging

    before = logging.get_verbosity()
    if quiet:
        logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(before)


def _checkpoint_tensor(folder: str, name: str) -> torch.Tensor | None:
    """One named tensor of a folder's weights (safetensors, else a PyTorch .bin), if present."""
    path = os.path.join(folder, "model.safetensors")
    if os.path.exists(path):
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            names = set(f.keys())
            return f.get_tensor(name) if name in names else None
    path = os.path.join(folder, "pytorch_model.bin")
    if os.path.exists(path):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(name)
    return None


AUTO_CLASSES = {"AutoModel": TaiyiModel}


def register() -> None:
    """Make ``model_type: taiyi_clip`` folders load through ``AutoConfig`` / ``AutoModel``."""
    import transformers

    transformers.AutoConfig.register(MODEL_TYPE, TaiyiConfig, exist_ok=True)
    for auto, cls in AUTO_CLASSES.items():
        getattr(transformers, auto).register(TaiyiConfig, cls, exist_ok=True)


register()  # importing this module directly registers it too (idempotent)
