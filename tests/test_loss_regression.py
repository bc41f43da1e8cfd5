"""Loss regression in the torchtune style: a seeded tiny run of each pretraining objective, on
real batches of the shipped corpus, must reach the stored loss after a few steps. A silent change
in masking, span corruption, labels or the loss wrapper moves these numbers; "loss goes down"
would not notice. If a change is meant to move them, rerun with FS_RAY_PRINT_LOSSES=1 and
update the table in the same commit, saying why.
"""

from __future__ import annotations

import os

import pytest
import torch

from fs_ray.data.tokenization import load_tokenizer
from fs_ray.families import get_family
from fs_ray.objectives import OBJECTIVES

from .pretrain_batches import demo_batches

STEPS = 6
# objective -> (family whose tiny preset runs it, losses at steps 1 and STEPS)
STORED = {
    "mlm": ("erlangshen", 9.926158, 9.227808),
    "clm": ("wenzhong", 9.976213, 8.945642),
    "span": ("randeng", 10.384411, 9.023232),
    "bart": ("randeng-bart", 9.984073, 9.062414),
    "gsg": ("randeng-pegasus", 10.313048, 9.547396),
    "unified": ("zhouwenwang", 19.912636, 18.225195),  # the sum of the MLM and the LM loss
    "denoise": ("bigan", 9.982952, 9.166752),
}


def tiny_run(objective_name: str, family_name: str) -> list[float]:
    family, objective = get_family(family_name), OBJECTIVES[objective_name]
    batches, special, vocab = demo_batches(family.tokenizer)
    torch.manual_seed(1234)
    model = family.build(objective.auto_class, family.config("tiny", vocab, 64, special))
    module = objective.wrap(model)
    ctx = objective.context(load_tokenizer(family.tokenizer))
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3, weight_decay=0.01)
    losses = []
    for step in range(STEPS):
        gen = torch.Generator().manual_seed(step)
        loss = module(**objective.inputs(batches[step % len(batches)], special, vocab, gen, ctx=ctx))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("objective", list(STORED))
def test_seeded_tiny_run_reaches_the_stored_loss(objective):
    family, first, last = STORED[objective]
    losses = tiny_run(objective, family)
    if os.environ.get("FS_RAY_PRINT_LOSSES"):
        print(f'"{objective}": ("{family}", {losses[0]:.6f}, {losses[-1]:.6f}),')
    assert losses[0] == pytest.approx(first, abs=1e-4), losses
    assert losses[-1] == pytest.approx(last, abs=1e-4), losses
    assert losses[-1] < losses[0]
