"""The modules DeepSpeed trains: a Hugging Face model wrapped so that ``forward`` returns the
objective's or method's loss (and, for fine-tuning, ``logits`` gives what evaluation scores).
Export unwraps them (their one child is ``model``)."""

from __future__ import annotations

import torch
from torch import nn

from fs_ray.objectives.masking import IGNORE_INDEX


class MaskedLMLoss(nn.Module):
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
        picked = labels != IGNORE_INDEX
        logits = self.model.cls(hidden[picked])
        return nn.functional.cross_entropy(logits.float(), labels[picked])


class CorrectorLoss(MaskedLMLoss):
    """The MLM corrector: cross-entropy of the MLM head at every labelled position (the target's
    character); ``chars`` (for decoding) is not a model input."""

    def forward(self, input_ids, attention_mask, labels, chars=None, **_):
        return super().forward(input_ids, attention_mask, labels)

    def logits(self, input_ids, attention_mask, chars=None, labels=None, **_):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class UnifiedLoss(nn.Module):
    """Zhouwenwang's unified objective: one forward with a per-row mask (``causal``), the MLM loss
    on the masked positions of bidirectional rows, the next-token loss on causal rows; the vocabulary
    projection runs only where a loss is taken. Returns their sum; ``parts`` holds each (NaN when
    the micro-batch had no row of that kind) for the progress log."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.parts: dict[str, torch.Tensor] = {}

    def forward(self, input_ids, attention_mask, labels, causal):
        base = getattr(self.model, self.model.base_model_prefix)
        hidden = base(input_ids=input_ids, attention_mask=attention_mask, causal=causal).last_hidden_state
        causal = causal.bool()
        picked = (labels != IGNORE_INDEX) & ~causal[:, None]
        shifted = labels[:, 1:]
        next_picked = (shifted != IGNORE_INDEX) & causal[:, None]
        # one pass through the (tied) head whatever the rows are: under ZeRO-3 every rank must
        # gather its parameters the same number of times
        states = torch.cat([hidden[picked], hidden[:, :-1][next_picked]])
        targets = torch.cat([labels[picked], shifted[next_picked]])
        losses = nn.functional.cross_entropy(self.model.cls(states).float(), targets, reduction="none")
        n_mlm = picked.sum()
        is_mlm = torch.arange(len(losses), device=losses.device) < n_mlm
        counts = torch.stack([n_mlm, len(losses) - n_mlm]).float()
        sums = torch.stack([losses[is_mlm].sum(), losses[~is_mlm].sum()])
        means = sums / counts.clamp(min=1)
        self.parts = {
            "mlm_loss": torch.where(counts[0] > 0, means[0], torch.nan).detach(),
            "lm_loss": torch.where(counts[1] > 0, means[1], torch.nan).detach(),
        }
        return means.sum() + hidden.sum() * 0.0  # every rank's graph reaches every parameter


class ModelLoss(nn.Module):
    """Causal LM and seq2seq: the Hugging Face model computes its own loss from ``labels``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss


class ContrastiveLoss(nn.Module):
    """Taiyi: the dual encoder's own symmetric InfoNCE over the global batch (``return_loss``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, pixel_values):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, return_loss=True
        ).loss


class HeadLoss(nn.Module):
    """Task head: the Hugging Face model's own logits, cross-entropy at sequence, choice or token level."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def logits(self, input_ids, attention_mask, token_type_ids, **_):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    def forward(self, input_ids, attention_mask, token_type_ids, label=None, labels=None, **_):
        target = labels if labels is not None else label
        logits = self.logits(input_ids, attention_mask, token_type_ids)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))


class UniMCLoss(nn.Module):
    """UniMC: each option's score is the MLM logit of ``yes_id`` at the option's ``[MASK]``;
    the loss is cross-entropy over the options of a row (padding options score -inf)."""

    def __init__(self, model: nn.Module, yes_id: int):
        super().__init__()
        self.model = model
        self.yes_id = yes_id
        if not hasattr(model, "cls"):
            raise ValueError(f"UniMC needs a BERT-style masked LM with a .cls head, got {type(model).__name__}")

    def logits(self, input_ids, attention_mask, token_type_ids, mask_pos, option_ids, **_):
        base = getattr(self.model, self.model.base_model_prefix)
        hidden = base(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        picked = hidden[rows, mask_pos]  # (B, K, H)
        scores = self.model.cls(picked)[..., self.yes_id].float()
        return scores.masked_fill(option_ids < 0, float("-inf"))

    def forward(self, input_ids, attention_mask, token_type_ids, mask_pos, option_ids, label, **_):
        return nn.functional.cross_entropy(self.logits(input_ids, attention_mask, token_type_ids, mask_pos, option_ids), label)


class _GatherRows(torch.autograd.Function):
    """All-gather along rows whose backward gives each rank the sum of every rank's gradient for
    its own rows (an all-reduce of the gathered gradient, then this rank's slice). Written here
    because ``torch.distributed.nn.functional.all_gather`` warns it is deprecated on every call."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows, ctx.rank = x.shape[0], dist.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's ``x`` (equal shapes) concatenated in rank order, and where this rank's rows
    start. The gather is differentiable: in backward each rank's rows receive the gradient every
    rank's loss sends them (summed over ranks), so the data-parallel average of the ranks'
    gradients is the gradient of the mean of their losses. A single process (or no process
    group) returns ``x`` itself."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    if len({int(n) for n in sizes}) > 1:
        raise ValueError(f"contrastive batches differ across ranks ({[int(n) for n in sizes]} rows): equal shards needed")
    return _GatherRows.apply(x.contiguous()), dist.get_rank() * x.shape[0]


def contrastive_loss(text: torch.Tensor, image: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over the **global** batch: this rank's texts are scored against
    every rank's images and its images against every rank's texts, with pair ``i`` the positive
    of row ``i``; the two cross-entropies are averaged. ``text`` and ``image`` are normalised
    (B, D) embeddings, ``scale`` the (clamped, exponentiated) temperature. With ``W`` ranks of
    ``b`` rows each, the ranks' mean loss (and, after data-parallel averaging, the gradients) are
    those of one process holding all ``W * b`` pairs."""
    text, image = text.float(), image.float()  # bf16 logits at scale 100 would step by 0.5
    all_text, start = gather_with_grad(text)
    all_image, _ = gather_with_grad(image)
    targets = torch.arange(start, start + text.shape[0], device=text.device)
    per_text = scale * text @ all_image.t()  # (b, W*b)
    per_image = scale * image @ all_text.t()
    return (
        nn.functional.cross_entropy(per_text, targets) + nn.functional.cross_entropy(per_image, targets)
    ) / 2
