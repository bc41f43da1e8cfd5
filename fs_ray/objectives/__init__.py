"""Pretraining objectives and fine-tuning methods, each an object in one table.

- :data:`OBJECTIVES` (``mlm``, ``clm``, ``span``, ``bart``, ``gsg``, ``unified``, ``denoise``, ``contrastive``): :mod:`fs_ray.objectives.pretraining`, built on
  the pure batch transforms of :mod:`fs_ray.objectives.masking`.
- :data:`METHODS` (``head``, ``unimc``, ``unimc_zero``, ``tfidf``, ``seq2seq``, ``clm``, ``lead``): :mod:`fs_ray.objectives.methods`.

A family (:mod:`fs_ray.families`) names the objectives and methods it supports from these tables.
"""

from __future__ import annotations

from fs_ray.objectives.methods import METHODS, Method
from fs_ray.objectives.pretraining import (
    CausalLM,
    Contrastive,
    Denoise,
    GapSentences,
    Objective,
    SpanCorruption,
    TextInfilling,
    UnifiedLM,
    WholeWordMLM,
)

OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (WholeWordMLM(), CausalLM(), SpanCorruption(), TextInfilling(), GapSentences(), UnifiedLM(), Denoise(), Contrastive())
}

__all__ = ["METHODS", "OBJECTIVES", "Method", "Objective", "get_method", "get_objective"]


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"{name!r} is not a pretraining objective ({', '.join(OBJECTIVES)})") from None


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"{name!r} is not a fine-tuning method ({', '.join(METHODS)})") from None
