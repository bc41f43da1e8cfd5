"""The layout of an fs_ray checkpoint and of an exported model folder, stated once.

A run folder holds one folder per checkpoint Ray Train registered::

    checkpoint_step00000060/
        deepspeed/             DeepSpeed engine state: every rank's shards (any ZeRO stage)
        fs_ray_state.json      step, data position, what was trained (auto class, objective or
                               method, family), the vocabulary's special ids, ZeRO stage
        hf_config.json         the trained model's Hugging Face config
        tokenizer.json         the tokenizer its data was encoded with
        fs_ray_task.json       fine-tuning: the task card, copied into the export
        export_probe.pt        last checkpoint: fixed inputs and the logits the workers computed
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
PROBE_FILE = "export_probe.pt"
TASK_FILE = "fs_ray_task.json"
EXPORT_FILE = "fs_ray_export.json"
POSITION_FILE = "data_position.json"
PREFIX = "checkpoint_step"


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
