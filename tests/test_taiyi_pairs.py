"""Taiyi end to end: image–text pairs read by Ray Data in three layouts, bad pairs counted by reason,
contrastive pretraining across 2 workers with a worker killed and resumed, zero-shot scoring."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch

from fs_ray.config import ConfigError, load_config
from fs_ray.data import digits
from fs_ray.data.images import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_BAD_REASONS,
    BadPair,
    PairSpec,
    decode_pairs,
    load_image,
    normalize,
    pair_dataset,
)
from fs_ray.run_configs import PretrainConfig
from fs_ray.training.contrastive import recall_at

from .faults import WorkerKiller, checkpoint_registered


@pytest.fixture(scope="module")
def digit_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    summary = digits.write_digits(str(out), ("jsonl", "parquet", "webdataset"))
    return out, summary


def _jsonl_batch(lines: list[str], path: str) -> dict[str, np.ndarray]:
    """What Ray Data's read_text(include_paths=True) hands the decoder."""
    return {"text": np.array(lines, dtype=object), "path": np.array([path] * len(lines), dtype=object)}


def _png(size=(12, 9), color=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# fast: the decoder, the generator, the metrics, the config
# ---------------------------------------------------------------------------------------------
def test_each_kind_of_bad_pair_is_counted_by_its_reason_and_the_good_ones_decoded(tmp_path):
    good = _png()
    (tmp_path / "good.png").write_bytes(good)
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "notes.png").write_bytes("这不是图片".encode())
    (tmp_path / "big.png").write_bytes(_png((400, 400)) + b"\0" * 5000)
    lines = [
        json.dumps({"image": "good.png", "text": "一张红色的图片"}, ensure_ascii=False),
        json.dumps({"image": str(tmp_path / "good.png"), "text": "绝对路径"}, ensure_ascii=False),
        '{"image": "good.png", "text": ',  # malformed_json
        '["good.png", "不是对象"]',  # malformed_json
        json.dumps({"image": "good.png"}),  # missing_field
        json.dumps({"image": "missing.png", "text": "文件不存在"}, ensure_ascii=False),  # unreadable_image
        json.dumps({"image": "notes.png", "text": "文本文件"}, ensure_ascii=False),  # not_an_image
        json.dumps({"image": "truncated.png", "text": "截断"}, ensure_ascii=False),  # truncated_image
        json.dumps({"image": "big.png", "text": "太大"}, ensure_ascii=False),  # image_too_large
        json.dumps({"image": "good.png", "text": "  \n "}),  # empty_caption
    ]
    spec = PairSpec("jsonl", image_size=8, max_text_len=12, tokenizer="bert-chinese", max_image_bytes=4000)
    out, counts, bad = decode_pairs(_jsonl_batch(lines, str(tmp_path / "pairs.jsonl")), spec)
    assert counts["records"] == 10 and counts["pairs"] == 2
    expected = {
        "malformed_json": 2,
        "missing_field": 1,
        "unreadable_image": 1,
        "not_an_image": 1,
        "truncated_image": 1,
        "image_too_large": 1,
        "empty_caption": 1,
    }
    assert {r: counts[r] for r in IMAGE_BAD_REASONS} == expected
    assert sorted(b["reason"] for b in bad) == sorted(r for r, n in expected.items() for _ in range(n))
    assert all(b["file"].endswith("pairs.jsonl") for b in bad)
    assert out["pixels"].shape == (2, 8, 8, 3) and out["pixels"].dtype == np.uint8
    assert (out["pixels"][..., 0] == 200).all() and (out["pixels"][..., 1] == 30).all()
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == (2, 12) and ids[0, 0] == 101 and ids[0, mask[0].sum() - 1] == 102  # [CLS] ... [SEP]
    assert mask[0].sum() == len("一张红色的图片") + 2


def test_resize_and_crop_match_clips_own_processor_on_a_real_photo():
    """The pipeline's decode (shorter side bicubic, centre crop) + normalize reproduce
    transformers' CLIP processor (its PIL backend), configured as the export's
    preprocessor_config.json says."""
    from PIL import Image
    from sklearn.datasets import load_sample_image
    from transformers import CLIPImageProcessorPil

    photo = load_sample_image("china.jpg")  # a real 427x640 JPEG scikit-learn ships
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=95)
    ours = normalize(load_image(buf.getvalue(), 64, 2**24)[None])
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, image_mean=CLIP_MEAN, image_std=CLIP_STD
    )
    theirs = processor(Image.open(io.BytesIO(buf.getvalue())), return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (1, 3, 64, 64)
    # the same PIL bicubic resize to the same size, the same crop: the same pixels
    assert torch.allclose(ours, theirs, atol=1e-5)
    with pytest.raises(BadPair) as err:
        load_image(buf.getvalue()[:2000], 64, 2**24)
    assert err.value.reason == "truncated_image"


def test_digits_holds_out_images_and_templates_and_captions_name_the_class(digit_set):
    out, summary = digit_set
    assert summary["images"] == 1797 and summary["test_images"] == 359
    assert not set(digits.TRAIN_TEMPLATES) & set(digits.HELDOUT_TEMPLATES)
    train = [json.loads(x) for x in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    test = [json.loads(x) for x in (out / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert not {r["image"] for r in train} & {r["image"] for r in test}
    rendered_heldout = {digits.caption(t, c) for t in digits.HELDOUT_TEMPLATES for c in range(10)}
    assert not rendered_heldout & {r["text"] for r in train}
    for r in train + test:
        assert digits.CLASSES[r["label"]] in r["text"] or str(r["label"]) in r["text"]
    # every class is held out in proportion (stratified)
    labels = np.bincount([r["label"] for r in test], minlength=10) // len(digits.HELDOUT_TEMPLATES)
    assert labels.min() >= 34 and labels.max() <= 38
    # the config's held-out templates are the generator's
    cfg = load_config(PretrainConfig, "jobs/configs/pretrain_taiyi_digits.yaml")
    assert [t.replace("{}", "{c}") for t in cfg.data.zero_shot.templates] == list(digits.HELDOUT_TEMPLATES)
    assert cfg.data.zero_shot.classes == list(digits.CLASSES)


def test_recall_at_k_on_a_hand_computed_case():
    similarity = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.7, 0.6, 0.1]])
    relevant = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=bool)
    # row 0: ranks 0,2,1 -> relevant at rank 2; row 1: 2,1,0 -> rank 2; row 2: 0,1,2 -> rank 1
    assert recall_at(similarity, relevant, ks=(1, 2, 3)) == {"R@1": 1 / 3, "R@2": 1.0, "R@3": 1.0}


def test_pairs_and_objective_must_agree_in_the_config():
    with pytest.raises(ConfigError, match=r"data\.pairs\.paths"):
        load_config(PretrainConfig, overrides=["model.family=taiyi"])
    with pytest.raises(ConfigError, match="prepared corpus"):
        load_config(PretrainConfig, overrides=["data.pairs.paths=[a.jsonl]"])
    with pytest.raises(ConfigError, match="templates"):
        load_config(
            PretrainConfig,
            overrides=["model.family=taiyi", "data.pairs.paths=[a.jsonl]", "data.zero_shot.classes=[a]", "data.zero_shot.templates=[无]"],
        )


def test_contrastive_objective_trains_the_pair_from_decoded_pairs(digit_set):
    from fs_ray.families import get_family
    from fs_ray.objectives import get_objective

    out, _ = digit_set
    lines = (out / "train.jsonl").read_text(encoding="utf-8").splitlines()[::97][:16]
    batch, _, _ = decode_pairs(_jsonl_batch(lines, str(out / "train.jsonl")), PairSpec("jsonl", 16, 16, "bert-chinese"))
    objective = get_objective("contrastive")
    family = get_family("taiyi")
    torch.manual_seed(0)
    model = family.build(objective.auto_class, family.config("tiny", 21128, 16, {"pad": 0}))
    inputs = objective.inputs({k: torch.as_tensor(v) for k, v in batch.items()}, {}, 0, None)
    assert inputs["pixel_values"].shape == (16, 3, 16, 16)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    white = (1 - mean) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)  # the scans' paper is white
    assert torch.allclose(inputs["pixel_values"].amax(dim=(2, 3), keepdim=True), white.expand(16, 3, 1, 1), atol=1e-5)
    loss = objective.wrap(model)(**inputs)
    loss.backward()
    assert abs(float(loss) - np.log(16)) < 1.0
    assert model.vision_model.visual_projection.weight.grad.abs().sum() > 0
    assert model.text_model.classifier.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# slow: Ray Data and Ray Train
# ---------------------------------------------------------------------------------------------
def test_ray_data_reads_the_same_pairs_from_jsonl_parquet_and_webdataset(ray_local, digit_set, tmp_path):
    import ray

    from fs_ray.data.images import pair_stats

    out, summary = digit_set
    results = {}
    for fmt, name in (("jsonl", "test.jsonl"), ("parquet", "test.parquet"), ("webdataset", "test-000000.tar")):
        spec = PairSpec(fmt, 16, 16, "bert-chinese", label_field="label" if fmt != "webdataset" else "cls", keep_text=True)
        rows = pair_dataset([str(out / name)], spec, decode_cpus=0.5).take_all()
        results[fmt] = sorted((r["caption"], int(r["label"]), r["pixels"].tobytes()) for r in rows)
    assert len(results["jsonl"]) == summary["test_pairs"]
    assert results["jsonl"] == results["parquet"] == results["webdataset"]

    # a tar shard with broken members: counted by reason in the shared stats actor, the rest kept
    shard = tmp_path / "mixed-000000.tar"
    members = [
        ("a.png", _png()), ("a.txt", "好图".encode()),
        ("b.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40), ("b.txt", "坏图".encode()),
        ("c.png", _png()), ("c.txt", b"   "),
        ("d.txt", "没有图".encode()),
    ]
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    stats = pair_stats(0.9)
    rows = pair_dataset([str(shard)], PairSpec("webdataset", 8, 8, "bert-chinese"), stats, 0.9, decode_cpus=0.5).take_all()
    counts = ray.get(stats.snapshot.remote())["counts"]
    assert len(rows) == 1 and counts["pairs"] == 1 and counts["records"] == 4
    assert (counts["truncated_image"], counts["empty_caption"], counts["missing_field"]) == (1, 1, 1)


def test_too_many_bad_pairs_stop_the_stream_naming_the_reasons(ray_local, tmp_path):
    (tmp_path / "ok.png").write_bytes(_png())
    lines = [json.dumps({"image": "ok.png" if i % 2 else "gone.png", "text": "图"}) for i in range(1200)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines), encoding="utf-8")
    from fs_ray.data.images import pair_stats

    ds = pair_dataset([str(tmp_path / "pairs.jsonl")], PairSpec("jsonl", 8, 8, "bert-chinese"), pair_stats(0.1), 0.1, decode_cpus=0.5)
    with pytest.raises(Exception, match=r"of 10\d\d records .* unreadable_image 5\d\d") as err:
        ds.take_all()
    assert "data.pairs.max_bad_fraction" in str(err.value) and "gone.png" in str(err.value)


def test_taiyi_trains_across_two_workers_survives_a_killed_worker_and_classifies_zero_shot(
    ray_local, digit_set, tmp_path
):
    from transformers import AutoModel

    from fs_ray.models import register
    from fs_ray.training.pretrain import pretrain

    out, _ = digit_set
    cfg = load_config(
        PretrainConfig,
        "jobs/configs/pretrain_taiyi_digits.yaml",
        [
            f"run.storage_path={tmp_path / 'runs'}",
            f"data.pairs.paths=[{out / 'train.parquet'}]",
            f"data.zero_shot.paths=[{out / 'test.parquet'}]",
            "optim.max_steps=160",
            "optim.lr=2e-3",
            "optim.schedule=constant",  # full rate once the pair leaves its collapsed start (~80 steps)
            "checkpoint.every_n_steps=40",
        ],
    )
    run_dir = tmp_path / "runs" / cfg.run.name

    killer = WorkerKiller(checkpoint_registered(tmp_path / "runs"))
    killer.start()
    try:
        summary = pretrain(cfg)
    finally:
        killer.stop()
    assert killer.killed, "no worker was killed"
    assert summary["metrics"]["step"] == 160
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 10 and steps[-1] == 160 and 50 in steps  # resumed after the step-40 checkpoint
    assert summary["pairs"]["pairs"] >= 160 * 64 and summary["pairs"]["records"] == summary["pairs"]["pairs"]
    scores = json.loads((run_dir / "zero_shot.json").read_text(encoding="utf-8"))
    assert scores["images"] == 359 and scores["texts"] == 30
    assert scores["zero_shot_accuracy"] > 0.15, scores  # chance 0.1; 359 images: 3 sd above it
    assert scores["image_to_text"]["R@1"] > 0.15  # chance 3 of 30 texts
    # the export is the released layout and reloads to the same embeddings
    export = summary["export"]
    assert (run_dir / "export" / "text" / "config.json").exists() and (run_dir / "export" / "vision" / "config.json").exists()
    register()
    model = AutoModel.from_pretrained(export).eval()
    preprocessor = json.loads((run_dir / "export" / "preprocessor_config.json").read_text())
    assert preprocessor["crop_size"] == {"height": 16, "width": 16}
    assert model.config.model_type == "taiyi_clip" and model.logit_scale.numel() == 1
    card = json.loads((run_dir / "export" / "fs_ray_image_text.json").read_text(encoding="utf-8"))
    assert card["max_text_len"] == 16 and card["image_size"] == 16 and card["classes"][7] == "七"

    # Taiyi's recipe from that export: continue the text tower against the frozen image tower
    # (model.from_pretrained given relative to the working directory, as a user types it)
    cont = load_config(
        PretrainConfig,
        "jobs/configs/pretrain_taiyi_digits.yaml",
        [
            f"run.storage_path={tmp_path / 'runs'}",
            "run.name=taiyi-frozen",
            f"model.from_pretrained={os.path.relpath(export)}",
            "model.overrides={freeze_vision: true}",
            f"data.pairs.paths=[{out / 'train.parquet'}]",
            "data.zero_shot=null",
            "optim.max_steps=20",
            "optim.warmup_steps=2",
            "checkpoint.every_n_steps=20",
        ],
    )
    again = pretrain(cont)
    assert again["metrics"]["step"] == 20
    from safetensors.torch import load_file

    before_v, after_v = (load_file(os.path.join(d, "vision", "model.safetensors")) for d in (export, again["export"]))
    before_t, after_t = (load_file(os.path.join(d, "text", "model.safetensors")) for d in (export, again["export"]))
    assert before_v.keys() == after_v.keys() and all(torch.equal(before_v[k], after_v[k]) for k in before_v)
    assert any(not torch.equal(before_t[k], after_t[k]) for k in before_t)  # the text tower trained
    card = json.loads((tmp_path / "runs" / "taiyi-frozen" / "export" / "fs_ray_image_text.json").read_text("utf-8"))
    assert card["classes"] == [] and card["trained_on"] == "taiyi-frozen"
