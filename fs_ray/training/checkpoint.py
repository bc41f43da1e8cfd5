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
        fs_ray_files_rank<N>.json  every file rank N wrote into the checkpoint and its size,
                               written last: a checkpoint is complete when every rank's list is
                               there and every listed file has its listed size
    data_position.json         pretraining: the data position of the latest registered checkpoint

A checkpoint that is not complete (a truncated shard, a rank's upload cut short by a killed
process or a full disk) is never resumed from or exported: :func:`newest_complete` walks back to
the newest complete one and says what is wrong with each it skips. A rerun that falls back saves
its checkpoints under new names (:class:`Names`), so Ray Train never holds two registrations of
one folder (deleting the old one would delete the new). Sizes are checked, not contents: a file
rewritten in place at the same size is for the storage's own checksums to catch.

An export (:mod:`fs_ray.training.export`) is a plain Hugging Face folder: ``config.json``,
``model.safetensors``, the tokenizer files, ``fs_ray_export.json`` (where it came from, the
probe's verified difference) and, for a fine-tuned model, ``fs_ray_task.json``.
"""

from __future__ import annotations

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
FILES_FILE = "fs_ray_files_rank{rank}.json"


def dir_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


class Names:
    """Checkpoint folder names for a run that resumed where ``taken`` names already exist: the
    step's own name, or ``<name>-1``, ``-2``, ... when a registered checkpoint has it (one skipped
    as incomplete: Ray Train still tracks it). Every rank computes the same names from the
    same listing, taken before any rank can save again (:func:`taken_names`)."""

    def __init__(self, taken=()):
        self.taken = set(taken)

    def __call__(self, step: int) -> str:
        name, n = dir_name(step), 0
        while (name if n == 0 else f"{name}-{n}") in self.taken:
            n += 1
        return name if n == 0 else f"{name}-{n}"


def is_checkpoint(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, STATE_FILE))


def write_file_list(folder: str, rank: int, world: int, step: int) -> None:
    """Rank ``rank``'s list of what it wrote into ``folder``: call it after the rank's last file."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, folder).replace(os.sep, "/")] = os.path.getsize(path)
    listing = {"rank": rank, "world_size": world, "step": step, "files": dict(sorted(files.items()))}
    with open(os.path.join(folder, FILES_FILE.format(rank=rank)), "w", encoding="utf-8") as f:
        json.dump(listing, f, indent=1)


def _fs(path: str, fs):
    from fs_ray import storage

    return (fs, path.rstrip("/")) if fs is not None else storage.resolve(path.rstrip("/"))


def problems(folder: str, fs=None) -> list[str]:
    """What is wrong with a checkpoint folder ([] when it is complete). ``fs``: a pyarrow
    filesystem ``folder`` is a path in (Ray's ``Checkpoint.filesystem``); else local or a URI."""
    import pyarrow.fs as pafs

    fs, base = _fs(folder, fs)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    sizes = {i.path[len(base) + 1 :]: i.size for i in infos if i.type == pafs.FileType.File}

    def read_json(name: str):
        with fs.open_input_stream(f"{base}/{name}") as f:
            return json.loads(f.read().decode("utf-8"))

    if STATE_FILE not in sizes:
        return [f"{STATE_FILE} missing (rank 0 never finished writing)"]
    try:
        world = read_json(STATE_FILE).get("world_size")
    except ValueError:
        return [f"{STATE_FILE} is not readable JSON ({sizes[STATE_FILE]} bytes)"]
    if world is None:  # saved before fs_ray listed files: nothing to check against
        return []
    found = []
    for rank in range(int(world)):
        name = FILES_FILE.format(rank=rank)
        if name not in sizes:
            found.append(f"rank {rank}'s file list {name} missing (its files never finished writing)")
            continue
        try:
            listed = read_json(name)["files"]
        except (ValueError, KeyError):
            found.append(f"rank {rank}'s file list {name} is not readable")
            continue
        for rel, size in listed.items():
            got = sizes.get(rel)
            if got is None:
                found.append(f"{rel} (rank {rank}) missing")
            elif got != size:
                found.append(f"{rel} (rank {rank}) is {got:,} bytes, {size:,} were written")
    return found


def checkpoint_names(run_folder: str, fs=None) -> list[str]:
    """The ``checkpoint_step*`` folder names of a run folder, oldest first."""
    import pyarrow.fs as pafs

    fs, base = _fs(run_folder, fs)
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return sorted(
        i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(PREFIX)
    )


def taken_names(run_folder: str, fs=None) -> set[str]:
    """The checkpoint names a resumed run must not write into: those Ray Train has registered. A
    folder it never registered is what the failure being recovered from left (an upload cut short,
    or one finished but not yet registered): the step is redone, its name written again and its
    files overwritten, so a finished run keeps no debris."""
    known = registered(run_folder, fs)
    fs, base = _fs(run_folder, fs)
    return {n for n in checkpoint_names(base, fs) if n in known}


def newest_complete(
    run_folder: str, at_or_before: str | None = None, fs=None
) -> tuple[str | None, list[tuple[str, list[str]]]]:
    """(name of the newest complete checkpoint of ``run_folder`` no newer than ``at_or_before``,
    [(name, problems)] of each newer one skipped); None when there is none."""
    fs, base = _fs(run_folder, fs)
    skipped = []
    for name in reversed(checkpoint_names(base, fs)):
        if at_or_before is not None and name > at_or_before:
            continue
        found = problems(f"{base}/{name}", fs)
        if not found:
            return name, skipped
        skipped.append((name, found))
    return None, skipped


SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's list of registered checkpoints


def registered(run_folder: str, fs=None) -> set[str]:
    """Names of the checkpoints Ray Train has registered for a run (from its snapshot). ``fs`` as
    in :func:`problems`."""
    import pyarrow.fs as pafs

    fs, base = _fs(run_folder, fs)
    path = f"{base}/{SNAPSHOT_FILE}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return set()
    with fs.open_input_stream(path) as f:
        text = f.read().decode("utf-8", errors="replace")
    try:
        snapshot = json.loads(text)
    except ValueError:  # unreadable: every checkpoint name it mentions counts
        return {n for n in checkpoint_names(base, fs) if f'"{n}"' in text}
    found, todo = set(), [snapshot]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            if isinstance(item.get("checkpoint_dir_name"), str):
                found.add(item["checkpoint_dir_name"])
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
        elif isinstance(item, str) and item.startswith(PREFIX):
            found.add(item)
    return found


def describe(skipped: list[tuple[str, list[str]]], limit: int = 3) -> str:
    """One line per skipped checkpoint: its name and its first problems."""
    lines = []
    for name, found in skipped:
        more = f" (and {len(found) - limit} more)" if len(found) > limit else ""
        lines.append(f"{name}: {'; '.join(found[:limit])}{more}")
    return "\n".join(lines)


def latest(run_folder: str, log=None) -> str | None:
    """The newest complete ``checkpoint_step*`` folder of a (local) run folder, or None; ``log``
    hears about each newer one skipped as incomplete."""
    name, skipped = newest_complete(run_folder)
    if skipped and log is not None:
        log(f"skipped incomplete checkpoint(s) of {run_folder}:\n{describe(skipped)}")
    return os.path.join(os.path.abspath(run_folder), name) if name else None


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
