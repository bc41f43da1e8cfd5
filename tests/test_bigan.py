"""Bigan: the Transformer-XL network (relative attention, segment memory, key/value cache), the
released FengShen layout loaded as published, and its SentencePiece tokenizer."""

from __future__ import annotations

import math

import pytest
import torch

from fs_ray.data.tokenization import load_tokenizer, special_ids
from fs_ray.models import bigan as xl
from fs_ray.pretrained import ModelFolder, load_model

from .released import bigan as released_bigan

VOCAB = 100


def tiny(seed: int = 0, **more) -> xl.TransfoXLDenoiseForCausalLM:
    torch.manual_seed(seed)
    shape = {"max_memory_length": 64, **more}
    cfg = xl.TransfoXLDenoiseConfig(
        num_layers=2, vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0, output_dropout_prob=0.0, **shape,
    )  # fmt: skip
    model = xl.TransfoXLDenoiseForCausalLM(cfg).eval()
    with torch.no_grad():  # trained relative biases are not zero
        model.transformer.r_w_bias.normal_(0, 0.5)
        model.transformer.r_r_bias.normal_(0, 0.5)
    return model


def test_segment_memory_gives_the_full_context_logits():
    model = tiny()
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        first = model(ids[:, :5], use_cache=False)
        second = model(ids[:, 5:9], mems=first.mems, use_cache=False)
        third = model(ids[:, 9:], mems=second.mems, use_cache=False)
    assert len(first.mems) == 3 and first.mems[0].shape == (2, 5, 32)  # embeddings + each layer's output
    assert torch.allclose(torch.cat([first.logits, second.logits, third.logits], 1), full, atol=1e-5)
    short = tiny(max_memory_length=3)  # a memory shorter than the context forgets, as Transformer-XL does
    with torch.no_grad():
        kept = short(ids[:, :5], use_cache=False).mems
        assert kept[0].shape[1] == 3
        forgot = short(ids[:, 5:], mems=kept, use_cache=False).logits
    assert not torch.allclose(forgot, full[:, 5:], atol=1e-3)


def test_activation_checkpointing_gives_the_same_gradients():
    model = tiny(3).train()
    ids = torch.randint(0, VOCAB, (2, 8))
    model(ids, labels=ids, use_cache=False).loss.backward()
    plain = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert model.transformer.gradient_checkpointing
    model(ids, labels=ids, use_cache=False).loss.backward()
    assert all(torch.allclose(p.grad, plain[k], atol=1e-6) for k, p in model.named_parameters() if k in plain)


def test_cached_generation_and_left_padding_give_the_full_forward():
    from transformers.cache_utils import DynamicCache

    model = tiny(1)
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache, steps = DynamicCache(config=model.config), []
        for t in range(ids.shape[1]):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits)
        padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids[:1]], dim=1)
        mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], dim=1)
        shifted = model(padded, attention_mask=mask, use_cache=False).logits[:, 4:]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    assert torch.allclose(shifted, full[:1], atol=1e-5)  # relative positions: padding before changes nothing
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(model.generate(ids[:, :3], **kw), model.generate(ids[:, :3], use_cache=False, **kw))
    with pytest.raises(ValueError, match=r"mems .* and cache .* cannot be combined"):
        model(
            ids[:, :2], mems=model(ids[:, :2], use_cache=False).mems, cache=DynamicCache(config=model.config)
        )


def reference_logits(state: dict, cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """FengShen's TransfoXLDenoiseModel forward written out from its published code on its state
    dict, independently of fs_ray.models.bigan: Transformer-XL's pad-and-reshape relative shift,
    Megatron's ``scores * mask - 10000 * (1 - mask)``, tanh GELU, tied output."""
    h, heads, t = cfg["hidden_size"], cfg["num_attention_heads"], ids.shape[1]
    d = h // heads
    ln = torch.nn.functional.layer_norm
    x = state["word_embeddings.weight"][ids]
    inv = state["transformer.position_embeddings.inv_freq"]
    angles = torch.outer(torch.arange(t - 1, -1, -1.0), inv)
    pos = torch.cat([angles.sin(), angles.cos()], dim=-1)
    mask = torch.tril(torch.ones(t, t))

    def heads_of(v):
        return v.view(*v.shape[:-1], heads, d).transpose(-3, -2)

    def rel_shift(v):
        zero = torch.zeros(*v.shape[:-1], 1)
        padded = torch.cat([zero, v], dim=-1).view(*v.shape[:-2], v.shape[-1] + 1, v.shape[-2])
        return padded[:, :, 1:].reshape(v.shape)

    def gelu(v):
        return 0.5 * v * (1 + torch.tanh(0.7978845608028654 * v * (1 + 0.044715 * v * v)))

    for i in range(cfg["num_layers"]):
        p = f"transformer.layers.{i}."

        def lin(name, v, p=p):
            return v @ state[p + name + ".weight"].T + state[p + name + ".bias"]

        y = ln(x, (h,), state[p + "input_layernorm.weight"], state[p + "input_layernorm.bias"], 1e-5)
        q, k, v = (heads_of(z) for z in lin("attention.query_key_value", y).chunk(3, dim=-1))
        r = heads_of(lin("attention.relative", pos))[None]
        ac = (q + state["transformer.r_w_bias"][:, None]) @ k.transpose(-1, -2)
        bd = rel_shift((q + state["transformer.r_r_bias"][:, None]) @ r.transpose(-1, -2))
        scores = (ac + bd) / math.sqrt(d)
        probs = (scores * mask - 10000.0 * (1 - mask)).softmax(-1)
        x = x + lin("attention.dense", (probs @ v).transpose(1, 2).reshape(1, t, h))
        y = ln(
            x,
            (h,),
            state[p + "post_attention_layernorm.weight"],
            state[p + "post_attention_layernorm.bias"],
            1e-5,
        )
        x = x + lin("mlp.dense_4h_to_h", gelu(lin("mlp.dense_h_to_4h", y)))
    x = ln(
        x, (h,), state["transformer.final_layernorm.weight"], state["transformer.final_layernorm.bias"], 1e-5
    )
    return x @ state["word_embeddings.weight"].T


def test_the_released_layout_loads_as_published_and_matches_fengshens_forward(tmp_path):
    import json

    import sentencepiece as spm

    folder = str(released_bigan(tmp_path / "Bigan-Transformer-XL-denoise-1.1B"))
    found = ModelFolder(folder)
    assert (found.family.name, found.kind) == ("bigan", "clm")  # architectures: [TransfoXLDenoiseModel]
    cfg = json.loads((tmp_path / "Bigan-Transformer-XL-denoise-1.1B" / "config.json").read_text())
    state = torch.load(f"{folder}/pytorch_model.bin", weights_only=True)
    model = load_model(folder, "AutoModelForCausalLM").eval()
    assert type(model).__name__ == "TransfoXLDenoiseForCausalLM"
    assert model.state_dict().keys() == state.keys()  # FengShen's names, nothing renamed
    ids = torch.randint(0, cfg["vocab_size"], (1, 11))
    with torch.no_grad():
        assert torch.allclose(
            model(ids, use_cache=False).logits, reference_logits(state, cfg, ids), atol=1e-4
        )

    # its tokenizer: SentencePiece's own ids, then <|endoftext|> (FengShen's eos) after the pieces
    tok = load_tokenizer(folder)
    sp = spm.SentencePieceProcessor(model_file=f"{folder}/spiece.model")
    for text in ("“凡是有成就的人，都很严肃地对待生命自己的”改写后是“", "今天 天气 很好 ABC 123"):
        assert tok.encode(text, add_special_tokens=False).ids == sp.encode(text)
    assert tok.token_to_id("<|endoftext|>") == len(sp) == special_ids(tok).eos
    # the rewriting prompt's parts, put together, are FengShen's one-string encoding of it
    from fs_ray.objectives.pretraining import continuation_ids, rewrite_ids

    opening, middle, closing = rewrite_ids(tok)
    noisy, clean = "今天天气很号", "今天天气很好"
    ours = [*opening, *continuation_ids(tok, noisy), *middle, *continuation_ids(tok, clean), *closing]
    assert ours == tok.encode(f"“{noisy}”改写后是“{clean}”", add_special_tokens=False).ids


# ---------------------------------------------------------------------------------------------
# the noiser and the denoise objective
# ---------------------------------------------------------------------------------------------
def test_confusion_sets_parse_into_token_tables_and_noise_is_seeded_and_at_its_rates():
    import numpy as np

    from fs_ray.objectives.noise import (
        CONFUSION_DIR,
        add_noise,
        confusion_table,
        read_same_pinyin,
        read_same_stroke,
    )

    sound, shape = (
        read_same_pinyin(CONFUSION_DIR / "same_pinyin.txt"),
        read_same_stroke(CONFUSION_DIR / "same_stroke.txt"),
    )
    assert "啊" in sound["阿"] and "阿" in sound["啊"]  # SIGHAN's commonest error pair, both ways
    assert all(c not in others for c, others in shape.items())
    assert any("未" in shape.get(c, []) for c in "末")  # a similar-shape pair
    tok = load_tokenizer("bert-chinese")
    table = confusion_table(tok)
    assert table.covered > 3000
    text = "但是我不能去参加，因为我有一点事情啊！听说你准备开一个舞会，那天我很抱歉。" * 20
    ids = np.array(tok.encode(text, add_special_tokens=False).ids)
    eligible = (table.sound[ids, 0] >= 0) | (table.shape[ids, 0] >= 0)
    a, sub_a = add_noise(ids, table, np.random.default_rng(7), substitute_ratio=0.2)
    b, sub_b = add_noise(ids, table, np.random.default_rng(7), substitute_ratio=0.2)
    assert np.array_equal(a, b) and np.array_equal(sub_a, sub_b)  # seeded
    assert len(a) == len(ids) and np.array_equal(a != ids, sub_a)
    assert abs(sub_a[eligible].mean() - 0.2) < 0.05 and not sub_a[~eligible].any()
    for i in np.flatnonzero(sub_a):  # every substitute is a confusion of the original character
        original, noisy = tok.id_to_token(int(ids[i])), tok.id_to_token(int(a[i]))
        assert noisy in sound.get(original, []) + shape.get(original, []), (original, noisy)
    keep = np.zeros(len(ids), dtype=bool)
    keep[:10] = True
    c, _ = add_noise(ids, table, np.random.default_rng(1), substitute_ratio=1.0, keep=keep)
    assert np.array_equal(c[:10], ids[:10])
    d, _ = add_noise(ids, table, np.random.default_rng(2), substitute_ratio=0.0, delete_ratio=0.1)
    e, _ = add_noise(ids, table, np.random.default_rng(2), substitute_ratio=0.0, insert_ratio=0.1)
    f, _ = add_noise(ids, table, np.random.default_rng(2), substitute_ratio=0.0, swap_ratio=0.1)
    assert 0.05 < 1 - len(d) / len(ids) < 0.15 and 0.05 < len(e) / len(ids) - 1 < 0.15
    assert len(f) == len(ids) and sorted(f) == sorted(ids) and not np.array_equal(f, ids)


def test_denoise_rows_are_quoted_rewrites_with_the_loss_on_the_clean_text_only():
    from fs_ray.families import get_family
    from fs_ray.objectives import OBJECTIVES
    from fs_ray.objectives.pretraining import REWRITE_ASCII

    from .pretrain_batches import demo_batches

    family = get_family("bigan")
    assert family.default_objective == "denoise"
    batches, special, vocab = demo_batches(family.tokenizer, seq_len=64)
    tok = load_tokenizer(family.tokenizer)
    objective = OBJECTIVES["denoise"]
    ctx = objective.context(tok)
    assert ctx.open == tuple(
        tok.encode(REWRITE_ASCII[0], add_special_tokens=False).ids
    )  # BERT: no curly quotes
    options = {"substitute_ratio": 0.3}
    out = objective.inputs(batches[0], special, vocab, torch.Generator().manual_seed(3), options, ctx=ctx)
    again = objective.inputs(batches[0], special, vocab, torch.Generator().manual_seed(3), options, ctx=ctx)
    assert all(torch.equal(out[k], again[k]) for k in out)
    changed = 0
    for ids, labels, mask in zip(out["input_ids"], out["labels"], out["attention_mask"], strict=True):
        n = int(mask.sum())
        seq, lab = ids[:n].tolist(), labels[:n].tolist()
        start = len(ctx.open)
        assert seq[:start] == list(ctx.open) and seq[-1] == special["sep"]  # the end token
        mid = next(i for i in range(start, n) if seq[i : i + len(ctx.middle)] == list(ctx.middle))
        noisy, target = seq[start:mid], seq[mid + len(ctx.middle) :]
        clean = target[: -len(ctx.close) - 1]
        assert target[-len(ctx.close) - 1 : -1] == list(ctx.close) and len(clean) >= 1
        assert (
            lab[: mid + len(ctx.middle)] == [-100] * (mid + len(ctx.middle))
            and lab[mid + len(ctx.middle) :] == target
        )
        assert (
            len(noisy) == len(clean) and special["sep"] not in clean
        )  # one document piece, substitutions only
        changed += noisy != clean
        assert (labels[n:] == -100).all() and (mask[n:] == 0).all()
    assert changed >= 2
    short = {k: v[:, :12] for k, v in batches[0].items() if k != "sample_id"}
    with pytest.raises(ValueError, match=r"denoise needs rows of at least \d+ tokens, got 12"):
        objective.inputs(short, special, vocab, torch.Generator().manual_seed(0), ctx=ctx)
    with pytest.raises(ValueError, match="denoise needs its context"):
        objective.inputs(batches[0], special, vocab, torch.Generator().manual_seed(0))
