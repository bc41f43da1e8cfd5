"""Zhouwenwang: the RoFormer network (rotary positions, one set of weights in two modes), the
released FengShen layout loaded faithfully, the unified objective, and Auto-class registration."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from fs_ray.families import get_family
from fs_ray.models import zhouwenwang as zw
from fs_ray.objectives import OBJECTIVES
from fs_ray.objectives.losses import UnifiedLoss
from fs_ray.pretrained import ModelFolder, load_model

from .conftest import REPO
from .pretrain_batches import demo_batches

VOCAB = 120


def tiny_config(**more) -> zw.ZhouwenwangConfig:
    return zw.ZhouwenwangConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **more,
    )


def tiny(cls=zw.ZhouwenwangForMaskedLM, seed: int = 0):
    torch.manual_seed(seed)
    return cls(tiny_config()).eval()


def test_causal_mode_cannot_see_the_future_and_bidirectional_mode_can():
    model = tiny()
    ids = torch.randint(5, VOCAB, (1, 9))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 1 - 5) % (VOCAB - 5) + 5
    with torch.no_grad():
        lm_a, lm_b = (model(x, causal=True).logits for x in (ids, changed))
        mlm_a, mlm_b = (model(x, causal=False).logits for x in (ids, changed))
    assert torch.allclose(lm_a[:, :6], lm_b[:, :6], atol=1e-6)  # positions before 6 never saw it
    assert not torch.allclose(lm_a[:, 6:], lm_b[:, 6:], atol=1e-4)
    assert not torch.allclose(mlm_a[:, :6], mlm_b[:, :6], atol=1e-4)  # bidirectional: they do
    # per-row modes in one batch give each row what it gets alone
    both = torch.cat([ids, ids])
    with torch.no_grad():
        mixed = model(both, causal=torch.tensor([True, False])).logits
    assert torch.allclose(mixed[0], lm_a[0], atol=1e-5) and torch.allclose(mixed[1], mlm_a[0], atol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients():
    model = tiny(zw.ZhouwenwangForMaskedLM).train()
    ids = torch.randint(5, VOCAB, (2, 8))
    model(ids, labels=ids).loss.backward()
    plain = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(ids, labels=ids).loss.backward()
    assert all(torch.allclose(p.grad, plain[k], atol=1e-6) for k, p in model.named_parameters() if k in plain)


def test_rotary_positions_are_relative_so_left_padding_changes_nothing():
    model = tiny(zw.ZhouwenwangForCausalLM)
    ids = torch.randint(5, VOCAB, (1, 6))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)], dim=1)
    with torch.no_grad():
        alone = model(ids, use_cache=False).logits
        shifted = model(padded, attention_mask=mask, use_cache=False).logits[:, 3:]
    assert torch.allclose(alone, shifted, atol=1e-5)


def test_cached_generation_gives_the_full_forward_logits_and_the_same_tokens():
    from transformers.cache_utils import DynamicCache

    model = tiny(zw.ZhouwenwangForCausalLM)
    ids = torch.randint(5, VOCAB, (2, 8))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache, steps = DynamicCache(config=model.config), []
        for t in range(ids.shape[1]):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits)
    assert torch.allclose(full, torch.cat(steps, dim=1), atol=1e-5)
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    cached = model.generate(ids[:, :3], **kw)
    uncached = model.generate(ids[:, :3], use_cache=False, **kw)
    assert cached.shape == (2, 9) and torch.equal(cached, uncached)


# ---------------------------------------------------------------------------------------------
# the released layout
# ---------------------------------------------------------------------------------------------
def reference_logits(state: dict, cfg: dict, ids: torch.Tensor, causal: bool) -> torch.Tensor:
    """FengShen's RoFormer forward written out from its published code, on a FengShen state dict
    (no prefix), independently of fs_ray.models: rotary pairs as complex numbers, masked scores
    filled with -inf as Megatron trained them, logits = hidden @ word embeddings (the model card's
    usage)."""
    h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    d = h // heads
    ln = torch.nn.functional.layer_norm
    eps = cfg["layer_norm_eps"]
    t = ids.shape[1]
    x = state["embeddings.word_embeddings.weight"][ids]
    x = x + state["embeddings.token_type_embeddings.weight"][torch.full_like(ids, int(causal))]
    angle = (
        torch.arange(t).float()[:, None] * torch.tensor([10000 ** (-2 * i / d) for i in range(d // 2)])[None]
    )
    turn = torch.polar(torch.ones_like(angle), angle)  # (T, d/2)

    def rotate(v):  # (B, H, T, d): pairs (v0, v1) are v0 + i v1
        c = torch.view_as_complex(v.reshape(*v.shape[:-1], d // 2, 2).contiguous()) * turn
        return torch.view_as_real(c).reshape(v.shape)

    hide = (
        torch.triu(torch.ones(t, t, dtype=torch.bool), 1) if causal else torch.zeros(t, t, dtype=torch.bool)
    )
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def lin(name, v, p=p):
            return v @ state[p + name + ".weight"].T + state[p + name + ".bias"]

        y = ln(x, (h,), state[p + "attention.ln.weight"], state[p + "attention.ln.bias"], eps)
        q, k, v = (
            lin(f"attention.self.{n}", y).view(1, t, heads, d).transpose(1, 2)
            for n in ("query", "key", "value")
        )
        scores = rotate(q) @ rotate(k).transpose(-1, -2) / math.sqrt(d)
        probs = scores.masked_fill(hide, float("-inf")).softmax(-1)
        x = x + lin("attention.output.dense", (probs @ v).transpose(1, 2).reshape(1, t, h))
        y = ln(x, (h,), state[p + "ln.weight"], state[p + "ln.bias"], eps)
        x = x + lin("output.dense", torch.nn.functional.gelu(lin("intermediate.dense", y)))
    x = ln(x, (h,), state["encoder.ln.weight"], state["encoder.ln.bias"], eps)
    return x @ state["embeddings.word_embeddings.weight"].T


def released_folder(tmp_path, model: zw.ZhouwenwangModel) -> tuple[str, dict, dict]:
    """A folder laid out as Zhouwenwang-Unified-110M is published: a megatron-bert config.json,
    FengShen RoFormerModel weights in pytorch_model.bin, a BERT-style vocab.txt."""
    folder = tmp_path / "Zhouwenwang-Unified-tiny"
    folder.mkdir()
    cfg = zw.config_to_fengshen(model.config)
    (folder / "config.json").write_text(json.dumps(cfg))
    state = zw.to_fengshen({f"bert.{k}": v for k, v in model.state_dict().items()}, model.config)
    torch.save(state, folder / "pytorch_model.bin")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(0x4E00 + i) for i in range(VOCAB - 5)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return str(folder), state, cfg


def test_the_released_layout_is_recognised_and_matches_fengshens_published_forward(tmp_path):
    torch.manual_seed(3)
    base = zw.ZhouwenwangModel(tiny_config()).eval()
    folder, state, cfg = released_folder(tmp_path, base)
    assert cfg["model_type"] == "megatron-bert" and "embeddings.position_ids" in state
    assert any(k.endswith("rope_emb.div_term") for k in state) and not any(
        k.startswith("bert.") for k in state
    )
    found = ModelFolder(folder)
    assert found.family.name == "zhouwenwang" and found.kind == "mlm"  # not Erlangshen's megatron-bert
    ids = torch.randint(5, VOCAB, (1, 7))
    mlm = load_model(folder, "AutoModelForMaskedLM")
    clm = load_model(folder, "AutoModelForCausalLM")
    encoder = load_model(folder, "AutoModel")  # the bare encoder, its keys without the prefix
    with torch.no_grad():
        assert torch.allclose(mlm(ids).logits, reference_logits(state, cfg, ids, causal=False), atol=1e-5)
        hidden = encoder(ids).last_hidden_state
        assert torch.allclose(
            hidden @ state["embeddings.word_embeddings.weight"].T, mlm(ids).logits, atol=1e-5
        )
        assert torch.allclose(
            clm(ids, use_cache=False).logits, reference_logits(state, cfg, ids, causal=True), atol=1e-5
        )
    # a real Erlangshen MegatronBERT folder is still Erlangshen's
    from transformers import MegatronBertConfig, MegatronBertForMaskedLM

    bert = tmp_path / "megatron"
    MegatronBertForMaskedLM(
        MegatronBertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    ).save_pretrained(bert)
    assert ModelFolder(str(bert)).family.name == "erlangshen"


def test_the_key_mapping_round_trips_both_ways():
    model = tiny(zw.ZhouwenwangForMaskedLM, seed=5)
    ours = model.state_dict()
    released = zw.to_fengshen(ours, model.config)
    assert "cls.decoder.weight" not in released and "encoder.layer.1.attention.self.query.weight" in released
    back = zw.from_fengshen(released)
    expected = {k: v for k, v in ours.items() if k != "cls.decoder.weight"}  # tied to the embeddings
    assert back.keys() == expected.keys() and all(torch.equal(back[k], expected[k]) for k in back)
    again = zw.to_fengshen(back, model.config)
    assert again.keys() == released.keys() and all(torch.equal(again[k], released[k]) for k in again)
    # a ForMaskedLM-style FengShen save (bert. prefix) maps the same way
    prefixed = {f"bert.{k}": v for k, v in released.items()}
    assert zw.from_fengshen(prefixed).keys() == back.keys()
    with pytest.raises(
        ValueError, match=r"cls\.predictions\.transform\.dense\.weight: a BERT-style prediction head"
    ):
        zw.from_fengshen({**released, "cls.predictions.transform.dense.weight": torch.zeros(2, 2)})


def test_an_export_loads_through_auto_classes_in_a_fresh_process_and_import_stays_light(tmp_path):
    model = tiny(zw.ZhouwenwangForMaskedLM, seed=1)
    model.save_pretrained(tmp_path / "export")
    ids = torch.randint(5, VOCAB, (1, 5))
    with torch.no_grad():
        expected = model(ids).logits
    torch.save({"ids": ids, "logits": expected}, tmp_path / "probe.pt")
    code = f"""
import sys, torch, fs_ray
from transformers import AutoConfig
assert type(AutoConfig.from_pretrained({str(tmp_path / "export")!r})).__name__ == "ZhouwenwangConfig"
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM
probe = torch.load({str(tmp_path / "probe.pt")!r})
mlm = AutoModelForMaskedLM.from_pretrained({str(tmp_path / "export")!r}).eval()
assert torch.allclose(mlm(probe["ids"]).logits, probe["logits"], atol=1e-6)
clm = AutoModelForCausalLM.from_pretrained({str(tmp_path / "export")!r}).eval()
assert type(clm).__name__ == "ZhouwenwangForCausalLM"
print(type(AutoModel.from_pretrained({str(tmp_path / "export")!r})).__name__)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ZhouwenwangModel")
    # the other order: transformers' model code first (as `from transformers import Trainer` does),
    # then a Bigan and a Zhouwenwang export through fs_ray's loader and the Auto classes
    from .released import bigan

    bigan_folder = bigan(tmp_path / "bigan")
    code = f"""
import fs_ray
from transformers import PreTrainedModel
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
from fs_ray.pretrained import load_model
print(type(AutoModelForMaskedLM.from_pretrained({str(tmp_path / "export")!r})).__name__)
print(type(load_model({str(bigan_folder)!r}, "AutoModelForCausalLM")).__name__)
"""
    out = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", code], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ZhouwenwangForMaskedLM", "TransfoXLDenoiseForCausalLM"]
    light = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, fs_ray; print('torch' in sys.modules, 'transformers' in sys.modules)",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert light.stdout.split() == ["False", "False"]  # registration waits for transformers' auto module


# ---------------------------------------------------------------------------------------------
# the unified objective
# ---------------------------------------------------------------------------------------------
def unified_inputs(options=None, seed=0):
    family = get_family("zhouwenwang")
    batches, special, vocab = demo_batches(family.tokenizer)
    objective = OBJECTIVES["unified"]
    batch = batches[0]
    return (
        objective,
        batch,
        special,
        vocab,
        objective.inputs(batch, special, vocab, torch.Generator().manual_seed(seed), options),
    )


def test_unified_inputs_pick_a_mode_per_sequence_seeded_with_labels_for_each_mode():
    objective, batch, special, _, inputs = unified_inputs({"lm_ratio": 0.5})
    causal = inputs["causal"]
    assert causal.dtype == torch.bool and 0 < int(causal.sum()) < len(causal)
    ids, labels, mask = batch["input_ids"], inputs["labels"], batch["attention_mask"].bool()
    # causal rows: the text itself, every real token a label; MLM rows: [MASK]s and labels only there
    assert torch.equal(inputs["input_ids"][causal], ids[causal])
    assert torch.equal(labels[causal][mask[causal]], ids[causal][mask[causal]])
    assert (labels[causal][~mask[causal]] == -100).all()
    mlm_rows = ~causal
    picked = labels[mlm_rows] != -100
    assert 0 < picked.float().mean() < 0.3 and (inputs["input_ids"][mlm_rows] == special["mask"]).any()
    again = unified_inputs({"lm_ratio": 0.5})[-1]
    assert all(torch.equal(inputs[k], again[k]) for k in inputs)  # seeded
    other = unified_inputs({"lm_ratio": 0.5}, seed=1)[-1]
    assert not torch.equal(inputs["labels"], other["labels"])
    assert unified_inputs({"lm_ratio": 1.0})[-1]["causal"].all()
    assert not unified_inputs({"lm_ratio": 0.0})[-1]["causal"].any()
    for seed in range(6):  # per_batch: one mode for the whole micro-batch
        c = unified_inputs({"per_batch": 1}, seed=seed)[-1]["causal"]
        assert c.all() or not c.any()
    assert objective.check_options({"per_batch": 2}).startswith("per_batch: 0 (a mode per sequence) or 1")
    assert "a ratio between 0 and 1" in objective.check_options({"lm_ratio": 1.5})


def test_unified_loss_is_the_sum_of_the_mlm_and_lm_losses_each_reported():
    objective, _, special, vocab, inputs = unified_inputs({"lm_ratio": 0.5})
    family = get_family("zhouwenwang")
    torch.manual_seed(0)
    model = family.build("AutoModelForMaskedLM", family.config("tiny", vocab, 64, special)).eval()
    wrapped = objective.wrap(model)
    assert isinstance(wrapped, UnifiedLoss)
    with torch.no_grad():
        total = wrapped(**inputs)
        causal = inputs["causal"]
        # each part recomputed on its own rows with the full-vocabulary heads
        lm_rows = {k: v[causal] for k, v in inputs.items() if k != "causal"}
        logits = model(lm_rows["input_ids"], lm_rows["attention_mask"], causal=True).logits
        lm = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), lm_rows["labels"][:, 1:].reshape(-1)
        )
        mlm_rows = {k: v[~causal] for k, v in inputs.items() if k != "causal"}
        mlm = model(mlm_rows["input_ids"], mlm_rows["attention_mask"], labels=mlm_rows["labels"]).loss
    assert torch.allclose(wrapped.parts["lm_loss"], lm, atol=1e-5)
    assert torch.allclose(wrapped.parts["mlm_loss"], mlm, atol=1e-5)
    assert torch.allclose(total, lm + mlm, atol=1e-5)
    only_mlm = unified_inputs({"lm_ratio": 0.0})[-1]
    with torch.no_grad():
        wrapped(**only_mlm)
    assert math.isnan(float(wrapped.parts["lm_loss"])) and math.isfinite(float(wrapped.parts["mlm_loss"]))


# ---------------------------------------------------------------------------------------------
# on the cluster: pretrain (a worker killed on the way), export, serve
# ---------------------------------------------------------------------------------------------
def test_unified_pretraining_resumes_after_a_killed_worker_exports_and_serves_both_modes(ray_local, tmp_path):
    import requests
    from ray import serve

    from fs_ray.assets import DEMO_CORPUS
    from fs_ray.config import load_config
    from fs_ray.data.corpus import prepare
    from fs_ray.run_configs import PrepareConfig, PretrainConfig, ServeConfig
    from fs_ray.serving.app import build_app, start_serve
    from fs_ray.serving.inference import Generator, MaskedLM
    from fs_ray.training.pretrain import pretrain

    from .conftest import free_port
    from .faults import WorkerKiller, checkpoint_registered

    src = tmp_path / "docs.txt"
    src.write_text("\n".join(DEMO_CORPUS.read_text(encoding="utf-8").split("\n")[:300]), encoding="utf-8")
    corpus = tmp_path / "corpus"
    prepare(
        load_config(PrepareConfig, None, [f"input.paths=[{src}]", f"output.dir={corpus}", "pack.seq_len=64"]),
        log=lambda *_: None,
    )
    cfg = load_config(
        PretrainConfig,
        REPO / "jobs/configs/pretrain_zhouwenwang_tiny.yaml",
        [
            f"data.prepared_dir={corpus}",
            f"run.storage_path={tmp_path / 'runs'}",
            "optim.micro_batch_size=8",
            "optim.warmup_steps=2",
            "optim.lr=2e-3",
            "optim.max_steps=16",
            "checkpoint.every_n_steps=4",
            "scaling.cpus_per_worker=0.5",
        ],
    )
    killer = WorkerKiller(checkpoint_registered(tmp_path / "runs"))
    killer.start()
    try:
        summary = pretrain(cfg)
    finally:
        killer.stop()
    assert killer.killed, "no worker was killed"
    run = tmp_path / "runs" / "zhouwenwang-tiny"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["metrics"]["step"] == 16 and records[-1]["step"] == 16
    for part in ("mlm_loss", "lm_loss"):
        values = [r[part] for r in records if r.get(part) is not None]
        assert len(values) >= 3 and values[-1] < values[0], f"{part} did not go down: {values}"
    export = summary["export"]
    info = json.loads((run / "export" / "fs_ray_export.json").read_text())
    assert info["verified_max_abs_logit_diff"] < 1e-4  # the export reproduces the workers' logits
    assert json.loads((run / "export" / "config.json").read_text())["model_type"] == "zhouwenwang"

    # one export, two modes, served side by side: fill-mask (bidirectional) and generate (causal)
    http_port = free_port()
    scfg = load_config(ServeConfig, None, [
        f"http_port={http_port}", f"grpc_port={free_port()}", "name=zw", "route_prefix=/",
        "replicas.num_cpus=0", "replicas.gateway_cpus=0", "replicas.torch_threads=1",
        f"models.fill_mask={export}", f"models.generate={export}",
    ])  # fmt: skip
    start_serve(scfg)
    serve.run(build_app(scfg), name=scfg.name, route_prefix=scfg.route_prefix)
    try:
        url = f"http://127.0.0.1:{http_port}"
        r = requests.post(f"{url}/v1/fill-mask", json={"text": "今天天气很[MASK]。", "top_k": 3}, timeout=120)
        assert r.status_code == 200, r.text
        want = MaskedLM(export).fill_mask(["今天天气很[MASK]。"], 3)[0][0]
        assert [g["token"] for g in r.json()["results"][0]["masks"][0]] == [t for t, _ in want]
        r = requests.post(f"{url}/v1/generate", json={"prompt": "今天天气", "max_new_tokens": 6}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["text"] == Generator(export).generate("今天天气", 6)
        bad = requests.post(f"{url}/v1/generate", json={"prompt": "   ", "max_new_tokens": 6}, timeout=60)
        assert bad.status_code == 422 and "prompt" in bad.text
    finally:
        serve.delete(scfg.name)
