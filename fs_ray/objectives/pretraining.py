"""Pretraining objectives as objects: what each needs from the vocabulary (checked in ``plan()``
before a worker starts), its batch transform, the loss wrapper DeepSpeed trains, the auto class
that builds, exports and loads its model, and the inputs export re-runs to verify itself.

The transforms themselves are pure functions in :mod:`fs_ray.objectives.masking`.
"""

from __future__ import annotations

from typing import Any


class Objective:
    """Base of the pretraining objectives; subclasses set the class attributes and ``inputs``."""

    name: str
    summary: str
    auto_class: str  # the transformers Auto class that builds, exports and loads the model
    probe_keys: tuple[str, ...] = ("input_ids", "attention_mask")

    def check(self, special: dict[str, Any]) -> str | None:
        """Why a corpus prepared with these special ids cannot feed this objective (None: it can)."""
        return None

    def inputs(
        self, batch: dict[str, Any], special: dict[str, Any], vocab_size: int, gen: Any
    ) -> dict[str, Any]:
        """The model inputs (labels included) for one micro-batch; ``gen`` seeds its randomness."""
        raise NotImplementedError

    def wrap(self, model):
        """The module DeepSpeed trains: ``forward(**inputs)`` returns the loss."""
        from fs_ray.objectives.losses import ModelLoss

        return ModelLoss(model)


class WholeWordMLM(Objective):
    name = "mlm"
    summary = "Chinese whole-word masking (jieba word starts), 15% of words, 80/10/10"
    auto_class = "AutoModelForMaskedLM"

    def check(self, special):
        if special.get("mask") is None:
            return "whole-word MLM needs a [MASK] token, which the corpus vocabulary lacks"
        return None

    def inputs(self, batch, special, vocab_size, gen):
        import torch

        from fs_ray.objectives import masking

        never = tuple(
            i for i in (special.get("cls"), special.get("sep"), special.get("pad")) if i is not None
        )
        ids = masking.MaskingIds(
            mask=special["mask"],
            vocab_size=vocab_size,
            never_mask=never,
            first_random=max(never) + 1 if never else 0,
        )
        starts = batch.get("word_starts")
        if starts is None:  # no jieba boundaries stored: every token is its own word
            starts = torch.ones_like(batch["input_ids"], dtype=torch.bool)
        inp, labels = masking.whole_word_mask(batch["input_ids"], starts, batch["attention_mask"], ids, gen)
        return {"input_ids": inp, "attention_mask": batch["attention_mask"], "labels": labels}

    def wrap(self, model):
        from fs_ray.objectives.losses import MaskedLMLoss

        return MaskedLMLoss(model)


class CausalLM(Objective):
    name = "clm"
    summary = "next-token prediction, padding ignored"
    auto_class = "AutoModelForCausalLM"

    def inputs(self, batch, special, vocab_size, gen):
        from fs_ray.objectives import masking

        inp, labels = masking.causal_lm(batch["input_ids"], batch["attention_mask"])
        return {"input_ids": inp, "attention_mask": batch["attention_mask"], "labels": labels}


class SpanCorruption(Objective):
    name = "span"
    summary = "T5 span corruption with sentinels (15% noise, mean span 3)"
    auto_class = "AutoModelForSeq2SeqLM"
    probe_keys = ("input_ids", "attention_mask", "labels")

    def check(self, special):
        from fs_ray.data.tokenization import sentinel_list

        if not sentinel_list(special):
            return (
                "span corruption needs sentinels: literal <extra_id_N> tokens, or a released T5 "
                "tokenizer folder with extra_ids 0 (FengShen's convention, the last ids of the vocabulary). "
                "Prepare the corpus with tokenizer.source=<the model folder> to continue a released "
                "model, or tokenizer.source=bert-chinese-sentinels for one trained from scratch"
            )
        if special.get("sep") is None and special.get("eos") is None:
            return "span corruption needs an end-of-text token ([SEP] or </s>) in the vocabulary"
        return None

    def inputs(self, batch, special, vocab_size, gen):
        from fs_ray.objectives import masking

        eos = special["sep"] if special.get("sep") is not None else special["eos"]
        from fs_ray.data.tokenization import sentinel_list

        drop = (special["cls"],) if special.get("cls") is not None else ()
        return masking.span_corruption(
            batch["input_ids"],
            batch["attention_mask"],
            sentinel_list(special),
            eos_id=eos,
            pad_id=special.get("pad") or 0,
            generator=gen,
            drop_ids=drop,
        )
