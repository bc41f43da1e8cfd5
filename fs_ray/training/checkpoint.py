"""The layout of an fs_ray checkpoint and of an exported model folder, stated once.

A run folder holds one folder per checkpoint Ray Train registered::

    checkpoint_step00000060/
        deepspeed/             DeepSpeed engine state: every rank's shards (any ZeRO stage)
        fs_ray_state.json      step, data position, what was trained (auto class, objective or
                               method, family), the vocabulary's special ids, ZeRO stage
        hf_config.json         the trained model's Hugging Face config
        tokenizer.json         the tokenizer its data was encoded with
        tokenizer_files/       the tokenizer files the model or vocabulary came with (vocab.txt,
                               spiece.model, merges.txt, ...), copied into the export as they were
        fs_ray_task.json       fine-tuning: the task card, copied into the export
        export_probe.pt        last checkpoint: fixed inputs and the logits the workers computed
        rng_state_rank<N>.pt   every rank's RNG states (torch CPU/CUDA, numpy, python): dropout
                               after a resume draws what it would have drawn uninterrupted
    data_position.json         pretraining: the data position of the latest registered checkpoint

An export (:mod:`fs_ray.training.export`) is a plain Hugging Face folder: ``config.json``,
``model.safetensors``, the tokenizer files, ``fs_ray_export.json`` (where it came from, the
probe's verified difference) and, for a fine-tuned model, ``fs_ray_task.json``.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

DS_TAG = "deepspeed"
STATE_FILE = "fs_ray_state.json"
HF_CONFIG_FILE = "hf_config.json"
TOKENIZER_FILE = "tokenizer.json"
ORIGINAL_TOKENIZER_DIR = "tokenizer_files"
PROBE_FILE = "export_probe.pt"
TASK_FILE = "fs_ray_task.json"
EXPORT_FILE = "fs_ray_export.json"
POSITION_FILE = "data_position.json"
PREFIX = "checkpoint_step"
RNG_FILE = "rng_state_rank{rank}.pt"


def dir_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def is_checkpoint(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, STATE_FILE))


def latest(run_folder: str) -> str | None:
    """The newest ``checkpoint_step*`` folder of a (local) run folder, or None."""
    found = sorted(glob.glob(os.path.join(run_folder, f"{PREFIX}*")))
    return found[-1] if found else None


def read_state(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, STATE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder} is not an fs_ray checkpoint (no {STATE_FILE})")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_task_card(folder: str) -> dict[str, Any] | None:
    """The fine-tuning card of an export or checkpoint folder (None for a pretrained model)."""
    path = os.path.join(folder, TASK_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from, in this process."""
    import random

    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
