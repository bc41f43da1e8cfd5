"""The family registry: every preset builds (published shapes at their published size), every
family's objectives train a step, and the config accepts only what the registry holds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fs_ray.config import ConfigError, load_config
from fs_ray.data.tokenization import load_tokenizer
from fs_ray.families import FAMILIES, family_for_model_type, get_family
from fs_ray.objectives import METHODS, OBJECTIVES
from fs_ray.run_configs import FinetuneConfig, PretrainConfig

from .pretrain_batches import demo_batches

REPO = Path(__file__).resolve().parents[1]
PRESETS = [(f.name, p) for f in FAMILIES.values() for p in f.presets]


def _count(family: str, preset: str, vocab_size: int = 0) -> int:
    f = get_family(family)
    cfg = f.config(preset, vocab_size, 128, {"pad": 0, "sep": 102})
    with torch.device("meta"):  # shapes only: the 3.5B presets cost no memory
        model = f.build(OBJECTIVES[f.default_objective].auto_class, cfg)
    if f.published_params:  # the part a published count names (Taiyi's: the text tower)
        return f.published_params(model)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("family", "preset"), PRESETS)
def test_every_preset_builds_and_published_shapes_have_their_published_size(family, preset):
    p = get_family(family).presets[preset]
    n = _count(family, preset, vocab_size=21128)
    assert n > 0
    if p.published:
        n = _count(family, preset)  # with the released checkpoint's own vocabulary
        assert abs(n / p.params - 1) <= p.tolerance, f"{p.published}: {n:,} parameters, published {p.params:,}"


def test_the_released_checkpoints_the_issue_names_are_presets():
    published = {p.published for f in FAMILIES.values() for p in f.presets.values()}
    for name in (
        "Erlangshen-Roberta-110M",
        "Erlangshen-Roberta-330M",
        "Erlangshen-MegatronBert-1.3B",
        "Wenzhong-GPT2-110M",
        "Wenzhong-GPT2-3.5B",
        "Randeng-T5-77M",
        "Randeng-T5-784M",
        "Randeng-BART-139M",
        "Randeng-BART-759M-Chinese-BertTokenizer",
        "Randeng-Pegasus-238M-Chinese",
        "Randeng-Pegasus-523M-Chinese",
        "Zhouwenwang-Unified-110M",
        "Zhouwenwang-Unified-1.3B",
        "Bigan-Transformer-XL-denoise-1.1B",
        "Taiyi-CLIP-Roberta-102M-Chinese",
        "Taiyi-CLIP-Roberta-large-326M-Chinese",
    ):
        assert f"IDEA-CCNL/{name}" in published, name
    # exact figures where the released config is known: Randeng-T5 (mT5 shapes, 32596 pieces, untied head)
    assert _count("randeng", "77m") == 77_440_384
    assert _count("randeng", "784m") == 784_108_544


# families trained on a prepared token corpus (Taiyi's image-text objective: tests/test_taiyi_pairs.py)
TEXT_FAMILIES = [f.name for f in FAMILIES.values() if not OBJECTIVES[f.default_objective].pairs]


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_each_family_objective_runs_forward_and_backward(family):
    f = FAMILIES[family]
    batches, special, vocab = demo_batches(f.tokenizer)
    for name in f.objectives:
        objective = OBJECTIVES[name]
        assert objective.check(special) is None
        torch.manual_seed(0)
        model = f.build(objective.auto_class, f.config("tiny", vocab, 64, special))
        ctx = objective.context(load_tokenizer(f.tokenizer))
        gen = torch.Generator().manual_seed(0)
        loss = objective.wrap(model)(**objective.inputs(batches[0], special, vocab, gen, ctx=ctx))
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_families_name_only_objectives_and_methods_that_exist():
    for f in FAMILIES.values():
        assert f.objectives and set(f.objectives) <= set(OBJECTIVES), f.name
        assert set(f.methods) <= set(METHODS), f.name
        assert f.default_objective == f.objectives[0]


def test_a_family_that_is_not_implemented_is_refused_naming_those_that_are():
    with pytest.raises(ConfigError, match=r"'gpt5' is not an implemented family \(erlangshen, wenzhong"):
        load_config(PretrainConfig, None, ["model.family=gpt5"])
    with pytest.raises(ConfigError, match=r"'medium' is not a wenzhong preset \(tiny, small, base"):
        load_config(PretrainConfig, None, ["model.family=wenzhong", "model.preset=medium"])
    with pytest.raises(ConfigError, match=r"'mlm' is not a randeng objective \(span\)"):
        load_config(PretrainConfig, None, ["model.family=randeng", "model.objective=mlm"])
    with pytest.raises(ConfigError, match=r"poisson: not an option of objective bart \(its options: mask_ratio"):
        load_config(PretrainConfig, None, ["model.family=randeng-bart", "model.objective_options={poisson: 3}"])
    with pytest.raises(ConfigError, match=r"poisson_lambda: must be above 0, got 0"):
        load_config(PretrainConfig, None, ["model.family=randeng-bart", "model.objective_options={poisson_lambda: 0}"])
    with pytest.raises(ConfigError, match=r"gap_ratio: a ratio between 0 and 1, got 1.5"):
        load_config(PretrainConfig, None, ["model.family=randeng-pegasus", "model.objective_options={gap_ratio: 1.5}"])
    cfg = load_config(PretrainConfig, None, ["model.family=randeng-bart", "model.objective_options={mask_ratio: 0.2}"])
    assert OBJECTIVES["bart"].settings(cfg.model.objective_options)["mask_ratio"] == 0.2
    with pytest.raises(ConfigError, match=r"'lora' is not a fine-tuning method \(head, unimc"):
        load_config(FinetuneConfig, None, ["methods=[lora]"])
    # a preset is not checked against a folder that brings its own shape
    cfg = load_config(PretrainConfig, None, ["model.family=wenzhong", "model.preset=huge", "model.from_pretrained=x"])
    assert cfg.model.objective_name == "clm"


def test_help_lists_the_families_and_methods_from_the_registry():
    out = subprocess.run(
        [sys.executable, "jobs/pretrain.py", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    for f in FAMILIES.values():
        assert f"{f.name}: {f.summary}" in " ".join(out.split()), f.name
    out = subprocess.run(
        [sys.executable, "jobs/finetune.py", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert all(m in out for m in METHODS)


def test_model_types_map_back_to_their_family():
    assert family_for_model_type("megatron-bert").name == "erlangshen"
    assert family_for_model_type("mt5").name == "randeng"
    assert family_for_model_type("gpt2").name == "wenzhong"  # the first family that claims it
    assert family_for_model_type("bart").name == "randeng-bart"
    assert family_for_model_type("pegasus").name == "randeng-pegasus"
    assert family_for_model_type("zhouwenwang").name == "zhouwenwang"
    assert family_for_model_type("transfo_xl_denoise").name == "bigan"
    assert family_for_model_type("taiyi_clip").name == "taiyi"
    assert family_for_model_type("clip") is None


# Names that would mean a family, objective or method is switched on by its string outside the
# registries (fs_ray/families, fs_ray/objectives) instead of asked of its object.
SWITCHES = re.compile(
    r"""(family|objective|method)\s*(==|!=|\bin\b)\s*[\("']|\.startswith\(\s*["'](unimc|head|mlm|clm|span)"""
    r"""|["'](erlangshen|wenzhong|yuyuan|randeng)["']"""
)


def test_no_family_objective_or_method_switch_outside_the_registries():
    found = []
    for folder in ("fs_ray", "jobs", "tune", "serve"):
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith(("fs_ray/families/", "fs_ray/objectives/", "fs_ray/protos/")):
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if SWITCHES.search(line):
                    found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "switch on a registry name outside the registry:\n" + "\n".join(found)
