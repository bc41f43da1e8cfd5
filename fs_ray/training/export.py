"""Checkpoint -> plain Hugging Face folder (config.json, model.safetensors, tokenizer files).

Works for every ZeRO stage: the DeepSpeed checkpoint's per-rank shards (ZeRO-1/2 optimizer
partitions, ZeRO-3 parameter partitions) are merged into one fp32 state dict on the CPU, the
way DeepSpeed's own ``zero_to_fp32`` does, then loaded into a model built from the saved
config with the auto class the checkpoint names, and written with ``save_pretrained``. The
result loads with ``AutoModelFor...`` and needs neither DeepSpeed nor fs_ray. Pretraining and
fine-tuning export the same way (the layout is :mod:`fs_ray.training.checkpoint`).
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import torch

from fs_ray.training import checkpoint as layout
from fs_ray.training.checkpoint import DS_TAG


def _module_states(checkpoint_dir: str) -> dict[str, torch.Tensor]:
    files = glob.glob(os.path.join(checkpoint_dir, DS_TAG, "mp_rank_00_model_states.pt"))
    if not files:
        raise FileNotFoundError(f"{checkpoint_dir}/{DS_TAG}/mp_rank_00_model_states.pt not found")
    return torch.load(files[0], map_location="cpu", weights_only=False)["module"]


def _state_dict(checkpoint_dir: str, zero_stage: int) -> dict[str, torch.Tensor]:
    if zero_stage > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=DS_TAG)
    return _module_states(checkpoint_dir)


PARTIAL = ".partial-"  # an export being written: <out_dir>.partial-<pid>


def export_checkpoint(checkpoint_dir: str, out_dir: str) -> str:
    """Write ``out_dir`` as a Hugging Face folder from an fs_ray checkpoint folder; return it.

    The folder is written under a temporary name beside ``out_dir`` and renamed into place only
    once complete, so a process killed mid-export leaves no folder that looks like a finished
    export (a rerun writes it again, clearing what the killed one left); an earlier export at
    ``out_dir`` is replaced only by a complete one."""
    target = os.path.normpath(out_dir)
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    for stale in glob.glob(glob.escape(target) + PARTIAL + "*"):  # left by a killed export
        shutil.rmtree(stale, ignore_errors=True)
    partial = f"{target}{PARTIAL}{os.getpid()}"
    try:
        _write(checkpoint_dir, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if os.path.isdir(target):  # a re-export: the old folder goes only once the new one is whole
        old = f"{target}{PARTIAL}old-{os.getpid()}"
        os.replace(target, old)
        os.replace(partial, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, target)
    return out_dir


def _write(checkpoint_dir: str, out_dir: str) -> None:
    from transformers import AutoConfig

    from fs_ray.families import get_family
    from fs_ray.models import register

    register()  # fs_ray's own architectures must be known to AutoConfig
    state = layout.read_state(checkpoint_dir)
    config = AutoConfig.from_pretrained(os.path.join(checkpoint_dir, layout.HF_CONFIG_FILE))
    model = get_family(state["family"]).build(state["auto_class"], config)
    weights = _state_dict(checkpoint_dir, int(state.get("zero_stage", 0)))
    weights = {k.removeprefix("model."): v.float() for k, v in weights.items()}  # the loss wrapper's prefix
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not any(k.endswith(t) for t in tied)]
    if missing and int(state.get("zero_stage", 0)) in (1, 2):
        # parameters without gradients (a frozen tower, e.g. Taiyi's image tower) are in no
        # optimizer partition: ZeRO-1/2 keep them whole in the module states, never updated (in the
        # training precision: bf16/fp16 runs hold them rounded to it)
        module = {k.removeprefix("model."): v.float() for k, v in _module_states(checkpoint_dir).items()}
        found = {k: module[k] for k in missing if k in module}
        if found:
            model.load_state_dict(found, strict=False)
            missing = [k for k in missing if k not in found]
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    verified = None
    probe_path = os.path.join(checkpoint_dir, layout.PROBE_FILE)
    if os.path.exists(probe_path):  # logits the training workers computed when saving this checkpoint
        probe = torch.load(probe_path, map_location="cpu", weights_only=True)
        model.eval()
        with torch.no_grad():
            logits = model(**probe["inputs"]).logits.float()
        verified = float((logits - probe["logits"]).abs().max())
        if verified > 1e-4:
            raise RuntimeError(
                f"export does not reproduce the trained model: max |logit difference| {verified:.3g}"
            )
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)

    originals = os.path.join(checkpoint_dir, layout.ORIGINAL_TOKENIZER_DIR)
    with open(os.path.join(checkpoint_dir, layout.TOKENIZER_FILE), encoding="utf-8") as f:
        tokenizer_json = f.read()
    save_tokenizer(
        out_dir,
        tokenizer_json,
        state["special_ids"],
        {n: os.path.join(originals, n) for n in os.listdir(originals)} if os.path.isdir(originals) else {},
    )
    if hasattr(model.config, "vision_config"):  # Taiyi: CLIP's preprocessing, the caption length and classes
        from fs_ray.training.contrastive import write_card, write_preprocessor

        size = int(model.config.vision_config.image_size)
        write_preprocessor(out_dir, size)
        if "image_text" in state:
            write_card(out_dir, image_size=size, **state["image_text"])
    card = layout.read_task_card(checkpoint_dir)
    if card is not None:  # a fine-tuned model: what serving and evaluation need to encode as training did
        with open(os.path.join(out_dir, layout.TASK_FILE), "w", encoding="utf-8") as f:
            json.dump(card, f, ensure_ascii=False, indent=2)
    with open(os.path.join(out_dir, layout.EXPORT_FILE), "w") as f:
        json.dump(
            {
                "from_checkpoint": os.path.abspath(checkpoint_dir),
                "verified_max_abs_logit_diff": verified,
                **state,
            },
            f,
            indent=2,
        )


def save_tokenizer(out_dir: str, tokenizer_json: str, special: dict, originals: dict[str, str]) -> None:
    """The tokenizer files of an export: ``tokenizer.json`` (with its special tokens named, for
    ``AutoTokenizer``) and, copied as they were, the files the model or vocabulary came with
    (``originals``: file name -> path; vocab.txt, spiece.model, merges.txt, tokenizer_config.json,
    ...), which slow-tokenizer loaders such as FengShen's own read."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json))  # jieba words: saved as marker + fallback
    backend = tokenizer.backend_tokenizer
    names = {
        "pad": "pad_token",
        "unk": "unk_token",
        "cls": "cls_token",
        "sep": "sep_token",
        "mask": "mask_token",
        "eos": "eos_token",
    }
    tokenizer.add_special_tokens(
        {names[k]: backend.id_to_token(v) for k, v in special.items() if k in names and isinstance(v, int)}
    )
    tokenizer.save_pretrained(out_dir)
    for name, src in originals.items():
        shutil.copyfile(src, os.path.join(out_dir, name))
