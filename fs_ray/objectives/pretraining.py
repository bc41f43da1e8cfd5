"""Pretraining objectives as objects: what each needs from the vocabulary (checked in ``plan()``
before a worker starts), its batch transform, the loss wrapper DeepSpeed trains, the auto class
that builds, exports and loads its model, and the inputs export re-runs to verify itself.

The transforms themselves are pure functions in :mod:`fs_ray.objectives.masking`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from fs_ray.families.base import doc_end


class Objective:
    """Base of the pretraining objectives; subclasses set the class attributes and ``inputs``."""

    name: str
    summary: str
    auto_class: str  # the transformers Auto class that builds, exports and loads the model
    probe_keys: tuple[str, ...] = ("input_ids", "attention_mask")
    # parts of the loss the wrapper reports (``.parts``), averaged and logged beside the loss
    loss_parts: tuple[str, ...] = ()
    # rates a config may set under ``model.objective_options`` (name -> default)
    options: ClassVar[dict[str, float]] = {}
    pairs = False  # True: trained on image-text pairs (data.pairs), not on a prepared token corpus

    def check_options(self, given: dict[str, Any]) -> str | None:
        """Why ``model.objective_options`` does not fit this objective (None: it does)."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            return f"{', '.join(unknown)}: not an option of objective {self.name} (its options: {known})"
        for key, value in given.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                return f"{key}: must be a non-negative number, got {value!r}"
            if key.endswith("ratio") and value > 1:
                return f"{key}: a ratio between 0 and 1, got {value!r}"
            if key in ("poisson_lambda", "mean_span") and value <= 0:
                return f"{key}: must be above 0, got {value!r}"
        return None

    def settings(self, given: dict[str, Any] | None) -> dict[str, float]:
        return {**self.options, **(given or {})}

    def check(self, special: dict[str, Any]) -> str | None:
        """Why a corpus prepared with these special ids cannot feed this objective (None: it can)."""
        return None

    def context(self, tokenizer) -> Any:
        """What :meth:`inputs` needs from the corpus's tokenizer beyond its special ids, built once
        per process (None: nothing). Raises ValueError naming what the vocabulary lacks; the plan
        calls it before any worker starts."""
        return None

    def min_seq_len(self, ctx) -> int:
        """The shortest packed row this objective can build an example from."""
        return 1

    def inputs(
        self, batch: dict[str, Any], special: dict[str, Any], vocab_size: int, gen: Any, options=None, ctx=None
    ) -> dict[str, Any]:
        """The model inputs (labels included) for one micro-batch; ``gen`` seeds its randomness,
        ``options`` overrides :attr:`options`, ``ctx`` is :meth:`context`'s."""
        raise NotImplementedError

    def wrap(self, model):
        """The module DeepSpeed trains: ``forward(**inputs)`` returns the loss."""
        from fs_ray.objectives.losses import ModelLoss

        return ModelLoss(model)


def _whole_word_masked(batch, special, vocab_size, gen):
    """(masked input ids, MLM labels): whole-word masking over the batch's jieba word starts."""
    import torch

    from fs_ray.objectives import masking

    never = tuple(i for i in (special.get("cls"), special.get("sep"), special.get("pad")) if i is not None)
    ids = masking.MaskingIds(
        mask=special["mask"],
        vocab_size=vocab_size,
        never_mask=never,
        first_random=max(never) + 1 if never else 0,
    )
    starts = batch.get("word_starts")
    if starts is None:  # no jieba boundaries stored: every token is its own word
        starts = torch.ones_like(batch["input_ids"], dtype=torch.bool)
    return masking.whole_word_mask(batch["input_ids"], starts, batch["attention_mask"], ids, gen)


class WholeWordMLM(Objective):
    name = "mlm"
    summary = "Chinese whole-word masking (jieba word starts), 15% of words, 80/10/10"
    auto_class = "AutoModelForMaskedLM"

    def check(self, special):
        if special.get("mask") is None:
            return "whole-word MLM needs a [MASK] token, which the corpus vocabulary lacks"
        return None

    def inputs(self, batch, special, vocab_size, gen, options=None, ctx=None):
        inp, labels = _whole_word_masked(batch, special, vocab_size, gen)
        return {"input_ids": inp, "attention_mask": batch["attention_mask"], "labels": labels}

    def wrap(self, model):
        from fs_ray.objectives.losses import MaskedLMLoss

        return MaskedLMLoss(model)


class CausalLM(Objective):
    name = "clm"
    summary = "next-token prediction, padding ignored"
    auto_class = "AutoModelForCausalLM"

    def inputs(self, batch, special, vocab_size, gen, options=None, ctx=None):
        from fs_ray.objectives import masking

        inp, labels = masking.causal_lm(batch["input_ids"], batch["attention_mask"])
        return {"input_ids": inp, "attention_mask": batch["attention_mask"], "labels": labels}


class SpanCorruption(Objective):
    name = "span"
    summary = "T5 span corruption with sentinels (15% noise, mean span 3)"
    auto_class = "AutoModelForSeq2SeqLM"
    probe_keys = ("input_ids", "attention_mask", "labels")
    options: ClassVar[dict[str, float]] = {"noise_density": 0.15, "mean_span": 3.0}

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

    def inputs(self, batch, special, vocab_size, gen, options=None, ctx=None):
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
            **self.settings(options),
        )


def _sentence_ends_missing(special) -> str | None:
    if "sentence_ends" not in special:
        return "the corpus was prepared before sentence ends were recorded: prepare it again"
    if not special["sentence_ends"]:
        return "the vocabulary has none of 。！？!? as a token, so no sentence can be found"
    return None


class TextInfilling(Objective):
    name = "bart"
    summary = "BART text infilling (Poisson-3 spans over 30% of tokens, one mask each) + sentence permutation"
    auto_class = "AutoModelForSeq2SeqLM"
    probe_keys = ("input_ids", "attention_mask", "labels")
    options: ClassVar[dict[str, float]] = {"mask_ratio": 0.3, "poisson_lambda": 3.0, "permute_ratio": 1.0}

    def check(self, special):
        if special.get("mask") is None:
            return "text infilling needs a mask token ([MASK] or <mask>), which the corpus vocabulary lacks"
        return _sentence_ends_missing(special)

    def inputs(self, batch, special, vocab_size, gen, options=None, ctx=None):
        from fs_ray.objectives import masking

        end = doc_end(special)
        protected = tuple(i for i in (special.get("cls"), end, special.get("pad")) if i is not None)
        return masking.text_infilling(
            batch["input_ids"],
            batch["attention_mask"],
            mask_id=special["mask"],
            protected=protected,
            sentence_ends=tuple(special["sentence_ends"]),
            doc_end=end,
            pad_id=special.get("pad") or 0,
            generator=gen,
            **self.settings(options),
        )


class GapSentences(Objective):
    name = "gsg"
    summary = "Pegasus gap sentences: the top 30% by ROUGE-1 against the rest become <mask_1>, the target"
    auto_class = "AutoModelForSeq2SeqLM"
    probe_keys = ("input_ids", "attention_mask", "labels")
    options: ClassVar[dict[str, float]] = {"gap_ratio": 0.3}

    def check(self, special):
        if special.get("sentence_mask") is None:
            return (
                "gap-sentence generation needs a sentence mask token (<mask_1>); prepare the corpus with "
                "tokenizer.source=pegasus-chinese or a Randeng-Pegasus folder"
            )
        if special.get("sep") is None and special.get("eos") is None:
            return "gap-sentence generation needs an end-of-text token (</s> or [SEP])"
        return _sentence_ends_missing(special)

    def inputs(self, batch, special, vocab_size, gen, options=None, ctx=None):
        from fs_ray.objectives import masking

        end = doc_end(special)  # as the corpus was packed
        drop = tuple(i for i in (special.get("cls"),) if i is not None)
        return masking.gap_sentences(
            batch["input_ids"],
            batch["attention_mask"],
            sentence_mask=special["sentence_mask"],
            drop_ids=drop,
            sentence_ends=tuple(special["sentence_ends"]),
            doc_end=end,
            pad_id=special.get("pad") or 0,
            eos_id=special["eos"] if special.get("eos") is not None else end,
            **self.settings(options),
        )


class UnifiedLM(Objective):
    """Zhouwenwang's unified pretraining: each sequence (or each whole micro-batch) is either
    whole-word MLM under a bidirectional mask or next-token prediction under a causal mask, over
    the same weights. The loss trained is the sum of the two means present in the micro-batch;
    each is logged on its own (``mlm_loss``, ``lm_loss``)."""

    name = "unified"
    summary = "Zhouwenwang: whole-word MLM (bidirectional) or causal LM (causal mask) per sequence, one loss each"
    auto_class = "AutoModelForMaskedLM"
    probe_keys = ("input_ids", "attention_mask", "causal")
    loss_parts = ("mlm_loss", "lm_loss")
    # lm_ratio: share of sequences trained as causal LM; per_batch 1: one mode per micro-batch
    options: ClassVar[dict[str, float]] = {"lm_ratio": 0.5, "per_batch": 0.0}

    def check_options(self, given):
        problem = super().check_options(given)
        if problem is None and given.get("per_batch", 0) not in (0, 1):
            return f"per_batch: 0 (a mode per sequence) or 1 (one mode per micro-batch), got {given['per_batch']!r}"
        return problem

    def check(self, special):
        return WholeWordMLM().check(special)

    def inputs(self, batch, special, vocab_size, gen, options=None, ctx=None):
        import torch

        opts = self.settings(options)
        rows = batch["input_ids"].shape[0]
        if opts["per_batch"]:
            causal = torch.full((rows,), bool(torch.rand(1, generator=gen).item() < opts["lm_ratio"]))
        else:
            causal = torch.rand(rows, generator=gen) < opts["lm_ratio"]
        masked, mlm_labels = _whole_word_masked(batch, special, vocab_size, gen)
        mask = batch["attention_mask"]
        lm_labels = batch["input_ids"].masked_fill(~mask.bool(), -100)
        pick = causal[:, None]
        return {
            "input_ids": torch.where(pick, batch["input_ids"], masked),
            "attention_mask": mask,
            "labels": torch.where(pick, lm_labels, mlm_labels),
            "causal": causal,
        }

    def wrap(self, model):
        from fs_ray.objectives.losses import UnifiedLoss

        return UnifiedLoss(model)


@dataclass(frozen=True)
class RewritePrompt:
    """Bigan's rewriting layout in one vocabulary's ids: ``“`` noisy ``”改写后是“`` clean ``”``."""

    table: Any  # fs_ray.objectives.noise.ConfusionTable
    open: tuple[int, ...]
    middle: tuple[int, ...]
    close: tuple[int, ...]


REWRITE = ("“", "”改写后是“", "”")  # FengShen's Bigan prompt: “{noisy}”改写后是“{clean}”
# the same with ASCII quotes, for vocabularies without curly ones (the Chinese BERT vocabulary)
REWRITE_ASCII = ('"', '"改写后是"', '"')


def continuation_ids(tokenizer, text: str) -> list[int]:
    """``text``'s ids as they are inside a sentence: a SentencePiece tokenizer marks the start of
    what it encodes (``▁``), which the middle of FengShen's prompt does not have; encoding after
    an anchor character and dropping the anchor's ids gives the in-sentence pieces (a WordPiece
    vocabulary gives the same ids either way)."""
    anchor = tokenizer.encode("。", add_special_tokens=False).ids
    full = tokenizer.encode("。" + text, add_special_tokens=False).ids
    if anchor and full[: len(anchor)] == anchor:
        return full[len(anchor) :]
    return tokenizer.encode(text, add_special_tokens=False).ids


def rewrite_ids(tokenizer) -> tuple[tuple[int, ...], ...] | None:
    """The rewriting prompt's three parts in ``tokenizer``'s ids as FengShen's one-string encoding
    of ``“{text}”改写后是“{clean}”`` has them (the first part starts the text, the others continue
    it): curly quotes where the vocabulary has them, else ASCII quotes; None when neither can be
    written without [UNK]."""
    unk = {tokenizer.token_to_id(t) for t in ("[UNK]", "<unk>")} - {None}
    for layout in (REWRITE, REWRITE_ASCII):
        first = tuple(tokenizer.encode(layout[0], add_special_tokens=False).ids)
        parts = (first, *(tuple(continuation_ids(tokenizer, p)) for p in layout[1:]))
        if all(p and not unk & set(p) for p in parts):
            return parts
    return None


class Denoise(Objective):
    """Bigan's correction pretraining: each packed row gives one clean span (a document piece
    between end tokens, at most half the row), noised on the fly (:func:`fs_ray.objectives.noise.
    add_noise`: confusion-set substitutions, optional deletions, insertions, swaps) and laid out as
    ``“{noisy}”改写后是“{clean}”`` + end; the loss is on the clean text, the closing quote and the
    end token only."""

    name = "denoise"
    summary = "Bigan: corpus text noised from confusion sets, rewritten “{noisy}”改写后是“{clean}”"
    auto_class = "AutoModelForCausalLM"
    options: ClassVar[dict[str, float]] = {
        "substitute_ratio": 0.05,
        "sound_ratio": 0.8,
        "delete_ratio": 0.0,
        "insert_ratio": 0.0,
        "swap_ratio": 0.0,
    }

    def check(self, special):
        if doc_end(special) is None and special.get("eos") is None:
            return "denoise needs an end token ([SEP], </s> or <|endoftext|>) to end each rewrite"
        return None

    def context(self, tokenizer) -> RewritePrompt:
        from fs_ray.objectives.noise import confusion_table

        table = confusion_table(tokenizer)
        if table.covered == 0:
            raise ValueError("denoise: no confusion-set character is a single token of this vocabulary")
        parts = rewrite_ids(tokenizer)
        if parts is None:
            raise ValueError(f"denoise: the vocabulary cannot write the rewriting prompt {''.join(REWRITE)!r}")
        return RewritePrompt(table, *parts)

    def min_seq_len(self, ctx) -> int:
        return len(ctx.open) + len(ctx.middle) + len(ctx.close) + 1 + 2 * 4  # a 4-token text, twice

    def inputs(self, batch, special, vocab_size, gen, options=None, ctx=None):
        import numpy as np
        import torch

        from fs_ray.objectives.noise import add_noise

        if ctx is None:
            raise ValueError("denoise needs its context (Objective.context(tokenizer)) to build rows")
        opts = self.settings(options)
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        end = special["eos"] if special.get("eos") is not None else doc_end(special)
        stop = doc_end(special)
        drop = {i for i in (special.get("cls"), special.get("pad")) if i is not None}
        width = batch["input_ids"].shape[1]
        if width < self.min_seq_len(ctx):
            raise ValueError(f"denoise needs rows of at least {self.min_seq_len(ctx)} tokens, got {width}")
        fixed = len(ctx.open) + len(ctx.middle) + len(ctx.close) + 1
        room = max(1, (width - fixed) // 2)
        pad = special.get("pad") if special.get("pad") is not None else end
        ids = np.full((len(batch["input_ids"]), width), pad, dtype=np.int64)
        labels = np.full_like(ids, -100)
        mask = np.zeros_like(ids)
        for r, (row, valid) in enumerate(zip(batch["input_ids"].numpy(), batch["attention_mask"].numpy().astype(bool), strict=True)):
            tokens = row[valid]
            cuts = np.flatnonzero(tokens == stop) if stop is not None else np.array([], dtype=np.int64)
            pieces = [p[~np.isin(p, list(drop | {stop}))] for p in np.split(tokens, cuts + 1)]
            pieces = [p for p in pieces if len(p)] or [tokens[:1]]
            clean = pieces[int(rng.integers(len(pieces)))]
            if len(clean) > room:
                start = int(rng.integers(len(clean) - room + 1))
                clean = clean[start : start + room]
            noisy, _ = add_noise(clean, ctx.table, rng, **opts)
            noisy = noisy[: width - fixed - len(clean)]
            prompt = [*ctx.open, *noisy, *ctx.middle]
            target = [*clean, *ctx.close, end]
            seq = prompt + target
            ids[r, : len(seq)] = seq
            labels[r, len(prompt) : len(seq)] = target
            mask[r, : len(seq)] = 1
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels),
        }


class Contrastive(Objective):
    """Taiyi's CLIP objective: each micro-batch is image–text pairs (``pixels`` uint8 NHWC from
    :mod:`fs_ray.data.images`, caption ``input_ids``); the loss is symmetric InfoNCE of every
    rank's texts against the images of the whole global batch and back
    (:func:`fs_ray.objectives.losses.contrastive_loss`). Reads pairs, not a packed corpus."""

    name = "contrastive"
    summary = "Taiyi: image-text pairs, symmetric InfoNCE over the global batch (features all-gathered)"
    auto_class = "AutoModel"
    probe_keys = ("input_ids", "attention_mask", "pixel_values")
    pairs = True  # fed by image-text pairs (data.pairs), not by a prepared token corpus

    def inputs(self, batch, special, vocab_size, gen, options=None, ctx=None):
        from fs_ray.data.images import normalize

        return {
            "input_ids": batch["input_ids"].long(),
            "attention_mask": batch["attention_mask"].long(),
            "pixel_values": normalize(batch["pixels"]),
        }

    def wrap(self, model):
        from fs_ray.objectives.losses import ContrastiveLoss

        return ContrastiveLoss(model)
