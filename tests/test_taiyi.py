"""Taiyi's dual encoder (fs_ray.models.taiyi): shapes, the released layout both ways, the frozen
image tower, and the contrastive loss across processes equal to one process's over the global batch."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import transformers

from fs_ray.models.taiyi import TaiyiModel, from_released, make_config
from fs_ray.objectives.losses import contrastive_loss
from tests import released

TEXT = {"vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 32, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0}  # fmt: skip
VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
          "image_size": 32, "patch_size": 8}  # fmt: skip


def _model(seed: int = 0, **more) -> TaiyiModel:
    torch.manual_seed(seed)
    return TaiyiModel(make_config(TEXT, VISION, 16, **more))


def _batch(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 120, (n, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[: n // 2, 9:] = 0  # some padding
    return ids, mask, torch.randn(n, 3, 32, 32, generator=g)


def test_forward_gives_normalised_embeddings_and_clips_loss():
    model = _model().eval()
    ids, mask, pixels = _batch(6)
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
    assert out.text_embeds.shape == out.image_embeds.shape == (6, 16)
    assert torch.allclose(out.text_embeds.norm(dim=-1), torch.ones(6), atol=1e-5)
    assert out.logits_per_text.shape == (6, 6) and torch.equal(out.logits_per_image, out.logits_per_text.t())
    assert math.isclose(model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    # CLIP's own symmetric loss on the same logits (transformers' CLIP)
    from transformers.models.clip.modeling_clip import image_text_contrastive_loss

    assert torch.allclose(out.loss, image_text_contrastive_loss(out.logits_per_text), atol=1e-5)
    # the text feature is the classifier head's logits (Taiyi's usage), unnormalised
    assert torch.allclose(
        model.get_text_features(ids, mask), model.text_model(ids, attention_mask=mask).logits
    )
    # one tower alone: embeddings only
    assert model(input_ids=ids, attention_mask=mask).image_embeds is None
    # the temperature is capped at 100 when used, and a capped one still gets a gradient (it can
    # come back down; a plain clamp would freeze it there)
    with torch.no_grad():
        model.logit_scale.fill_(9.0)
    scale = model.scale()
    assert math.isclose(scale.item(), 100.0, rel_tol=1e-5)
    scale.backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.item() > 0
    # a default config is a valid pair (its text tower projects to projection_dim)
    assert transformers.AutoConfig.for_model("taiyi_clip").text_config.num_labels == 512


def test_export_round_trip_loads_with_automodel_and_each_tower_where_taiyi_and_clip_load(tmp_path):
    model = _model().eval()
    with torch.no_grad():
        model.logit_scale.fill_(3.3)  # a trained temperature is saved with the pair
    ids, mask, pixels = _batch(4)
    before = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    model.save_pretrained(tmp_path / "export")
    assert sorted(os.listdir(tmp_path / "export")) == ["config.json", "text", "vision"]
    saved = json.loads((tmp_path / "export" / "config.json").read_text(encoding="utf-8"))
    assert saved["model_type"] == "taiyi_clip" and math.isclose(
        saved["logit_scale_init_value"], 3.3, rel_tol=1e-6
    )
    loaded = transformers.AutoModel.from_pretrained(tmp_path / "export").eval()
    assert isinstance(loaded, TaiyiModel) and math.isclose(float(loaded.logit_scale), 3.3, rel_tol=1e-6)
    after = loaded(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    assert torch.equal(before.logits_per_text, after.logits_per_text)
    # text/ is Taiyi's text checkpoint layout, vision/ loads as CLIP's vision tower with projection
    text = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "export" / "text").eval()
    assert torch.equal(text(ids, attention_mask=mask).logits, model.get_text_features(ids, mask))
    vision = transformers.CLIPVisionModelWithProjection.from_pretrained(tmp_path / "export" / "vision").eval()
    assert torch.equal(vision(pixel_values=pixels).image_embeds, model.get_image_features(pixels))


def test_released_taiyi_text_and_openai_clip_folders_load_as_the_pair(tmp_path):
    text_dir = released.taiyi_text(tmp_path / "taiyi", projection=32)
    clip_dir = released.openai_clip(tmp_path / "clip", projection=32, logit_scale=3.1)
    assert not (text_dir / "model.safetensors").exists()  # pytorch_model.bin, as released
    pair = from_released(str(text_dir), str(clip_dir))
    ids, mask, pixels = _batch(3)
    ids = ids.clamp(max=100)
    taiyi = transformers.BertForSequenceClassification.from_pretrained(text_dir).eval()
    clip = transformers.CLIPModel.from_pretrained(clip_dir).eval()
    # exactly what Taiyi's usage code computes: the text classifier's logits, CLIP's image features
    assert torch.equal(pair.get_text_features(ids, mask), taiyi(ids, attention_mask=mask).logits)
    clip_image = clip.get_image_features(pixel_values=pixels)
    clip_image = getattr(clip_image, "pooler_output", clip_image)
    assert torch.allclose(pair.get_image_features(pixels), clip_image, atol=1e-6)
    assert math.isclose(float(pair.logit_scale), 3.1, rel_tol=1e-6)  # CLIP's trained temperature
    # saved and loaded again: the same pair
    pair.save_pretrained(tmp_path / "export")
    again = transformers.AutoModel.from_pretrained(tmp_path / "export").eval()
    assert torch.equal(again.get_image_features(pixels), pair.get_image_features(pixels))
    # towers of different widths are refused, naming both
    other = released.openai_clip(tmp_path / "clip16", projection=16)
    with pytest.raises(ValueError, match=r"num_labels.*16"):
        from_released(str(text_dir), str(other))


def test_frozen_image_tower_gets_no_gradient_and_stays_in_eval_mode(tmp_path):
    model = _model(freeze_vision=True).train()
    assert not model.vision_model.training and model.text_model.training
    ids, mask, pixels = _batch(4)
    model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True).loss.backward()
    assert all(p.grad is None for p in model.vision_model.parameters())
    assert all(p.grad is not None for p in model.text_model.parameters() if p.requires_grad)
    assert model.logit_scale.grad is not None
    model.save_pretrained(tmp_path / "frozen")
    loaded = transformers.AutoModel.from_pretrained(tmp_path / "frozen")
    assert loaded.config.freeze_vision and not any(p.requires_grad for p in loaded.vision_model.parameters())
    # an override through AutoModel applies (it reaches the model inside the config AutoModel read)
    _model().save_pretrained(tmp_path / "free")
    frozen = transformers.AutoModel.from_pretrained(tmp_path / "free", freeze_vision=True)
    assert not any(p.requires_grad for p in frozen.vision_model.parameters())
    with pytest.raises(ValueError, match="projection_dim=8"):
        transformers.AutoModel.from_pretrained(tmp_path / "free", projection_dim=8)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    ids, mask, pixels = _batch(4)
    runs = []
    for checkpointing in (False, True):
        model = _model(seed=2).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        loss = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True).loss
        loss.backward()
        runs.append((loss.item(), model.text_model.bert.embeddings.word_embeddings.weight.grad.clone()))
    assert math.isclose(runs[0][0], runs[1][0], rel_tol=1e-6) and torch.allclose(runs[0][1], runs[1][1], atol=1e-6)


def _rank_grads(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = _model(seed=3).eval()  # no dropout: the runs must see the same network
        ids, mask, pixels = _batch(8, seed=5)
        b = 8 // world
        part = slice(rank * b, (rank + 1) * b)
        out_ = model(input_ids=ids[part], attention_mask=mask[part], pixel_values=pixels[part])
        loss = contrastive_loss(out_.text_embeds, out_.image_embeds, model.scale())
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        dist.all_reduce(grads)  # what data-parallel training does: the ranks' mean gradient
        losses = torch.tensor([float(loss)])
        dist.all_reduce(losses)
        if rank == 0:
            torch.save({"loss": float(losses) / world, "grads": grads / world}, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_of_b_pairs_give_one_rank_of_2b_pairs_loss_and_gradients(tmp_path):
    out = str(tmp_path / "two.pt")
    mp.spawn(_rank_grads, args=(2, _free_port(), out), nprocs=2, join=True)
    two = torch.load(out)
    model = _model(seed=3).eval()
    ids, mask, pixels = _batch(8, seed=5)
    whole = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
    whole.loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert math.isclose(two["loss"], float(whole.loss), rel_tol=1e-5)
    assert torch.allclose(two["grads"], grads, rtol=1e-4, atol=1e-6), (two["grads"] - grads).abs().max()
    # without the gather each rank would only see its own half as negatives: a different loss
    half = model(input_ids=ids[:4], attention_mask=mask[:4], pixel_values=pixels[:4], return_loss=True)
    assert not math.isclose(float(half.loss), float(whole.loss), rel_tol=1e-3)


def test_released_pair_exported_by_the_cli_serves_what_taiyi_and_clip_compute(tmp_path):
    """``jobs/export.py --taiyi TEXT CLIP OUT`` writes the released towers as one folder that
    serving loads; its embeddings are Taiyi's text logits and CLIP's image features, normalised."""
    import io
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from fs_ray.data.images import load_image, normalize
    from fs_ray.data.tokenization import load_tokenizer
    from fs_ray.serving.inference import ImageText

    text_dir = released.taiyi_text(tmp_path / "taiyi", projection=32)
    clip_dir = released.openai_clip(tmp_path / "clip", projection=32)
    out = tmp_path / "taiyi-pair"
    proc = subprocess.run(
        [sys.executable, "jobs/export.py", "--taiyi", str(text_dir), str(clip_dir), str(out)],
        cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    served = ImageText(str(out))
    assert served.classes == [] and served.templates == ["{}"]
    texts = ["一只猫", "北京的天安门广场"]
    ids = [load_tokenizer(str(text_dir)).encode(t).ids for t in texts]
    taiyi = transformers.BertForSequenceClassification.from_pretrained(text_dir).eval()
    with torch.no_grad():
        want = torch.cat([taiyi(torch.tensor([row])).logits for row in ids])
    got = torch.tensor(served.embed_texts(texts))
    assert torch.allclose(got, torch.nn.functional.normalize(want, dim=-1), atol=1e-5)

    photo = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(photo, "PNG")
    clip = transformers.CLIPModel.from_pretrained(clip_dir).eval()
    pixels = load_image(photo.getvalue(), served.image_size, 2**20)[None]
    with torch.no_grad():
        image = clip.get_image_features(pixel_values=normalize(pixels))
    image = getattr(image, "pooler_output", image)
    got = torch.tensor(served.embed_images([photo.getvalue()]))
    assert torch.allclose(got, torch.nn.functional.normalize(image, dim=-1), atol=1e-5)
    (label, ranked), = served.classify([photo.getvalue()], ["猫", "狗"])
    assert label == ranked[0][0] and abs(sum(p for _, p in ranked) - 1) < 1e-5
