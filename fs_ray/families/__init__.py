"""The model families fs_ray implements, one module each, listed once in :data:`FAMILIES`.

The config's ``model.family`` choices, ``--help``, plan-time checks, export and serving all read
this table; a family that is not here does not exist for fs_ray (the config refuses it and names
those that do). Adding a family: a module with a :class:`~fs_ray.families.base.Family`, one line
below, a YAML under ``jobs/configs/`` and its tests.
"""

from __future__ import annotations

from fs_ray.families import (
    bigan,
    erlangshen,
    randeng,
    randeng_bart,
    randeng_pegasus,
    taiyi,
    wenzhong,
    yuyuan,
    zhouwenwang,
)
from fs_ray.families.base import Family, Preset

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        erlangshen.FAMILY,
        wenzhong.FAMILY,
        yuyuan.FAMILY,
        randeng.FAMILY,
        randeng_bart.FAMILY,
        randeng_pegasus.FAMILY,
        zhouwenwang.FAMILY,
        bigan.FAMILY,
        taiyi.FAMILY,
    )
}

DEFAULT_FAMILY = "erlangshen"  # what a config that names no family trains

__all__ = [
    "DEFAULT_FAMILY",
    "FAMILIES",
    "Family",
    "Preset",
    "build_model",
    "family_for_model_type",
    "get_family",
]


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"{name!r} is not an implemented family ({', '.join(FAMILIES)})") from None


def family_for_model_type(model_type: str | None) -> Family | None:
    """The first family whose checkpoints carry this Hugging Face ``model_type``."""
    return next((f for f in FAMILIES.values() if model_type in f.model_types), None)


def build_model(
    model_cfg,
    auto_class: str,
    vocab_size: int,
    seq_len: int,
    special: dict,
    head_kwargs: dict | None = None,
):
    """The Hugging Face model a run trains: ``model_cfg.from_pretrained`` (a folder, URI or hub id,
    see :mod:`fs_ray.pretrained`) loaded with ``auto_class``, or the family's preset built from its
    config. ``head_kwargs`` (labels of a task head) go into the config; ``model_cfg.reinit_head``
    lets a released head of another size be replaced. A loaded model's vocabulary is never resized:
    the run's plan has checked that the corpus's tokenizer is the model's own."""
    head_kwargs = head_kwargs or {}
    if model_cfg.from_pretrained:
        from fs_ray.pretrained import load_model, resolve

        extra = {"ignore_mismatched_sizes": True} if model_cfg.reinit_head else {}
        return load_model(resolve(model_cfg.from_pretrained), auto_class, **head_kwargs, **extra, **model_cfg.overrides)
    family = get_family(model_cfg.family)
    config = family.config(model_cfg.preset, vocab_size, seq_len, special, model_cfg.overrides)
    for key, value in head_kwargs.items():
        setattr(config, key, value)
    return family.build(auto_class, config)
