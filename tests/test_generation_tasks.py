"""Generation tasks without a cluster: CSL/LCSTS readers, the seeded holdout, prompt-wrapped
seq2seq and causal-LM rows, decoding a batch, and the refusals (no Ray: fast tier)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fs_ray.config import ConfigError, load_config
from fs_ray.data.encoding import IGNORE, Encoder, collate_rows, encode_generation
from fs_ray.data.tasks import TaskDataError, load_split, task_spec
from fs_ray.data.tokenization import load_tokenizer, special_ids
from fs_ray.generation import decode_text, generate_ids
from fs_ray.run_configs import FinetuneConfig
from fs_ray.training import finetune
from tests.task_data import SPECS, _write_tasks

TESTDATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gen")
    _write_tasks(root)
    return root


def cfg(data: Path, *more: str) -> FinetuneConfig:
    return load_config(
        FinetuneConfig,
        None,
        [*SPECS, f"task.data_root={data}", "task.names=[sep_gen]", "methods=[seq2seq, lead]",
         "model.family=randeng", "tokenizer.source=bert-chinese-sentinels", "task.max_len=40", *more],
    )  # fmt: skip


def test_the_holdout_is_seeded_disjoint_and_keeps_file_order(data):
    c = cfg(data)
    spec = finetune.task_specs(c)["sep_gen"]
    a = load_split("sep_gen", spec, str(data), "full")
    b = load_split("sep_gen", spec, str(data), "full")
    assert (len(a.train), len(a.dev)) == (120, 40)
    assert [ex.where for ex in a.dev] == [ex.where for ex in b.dev]  # same seed, same dev
    assert not {ex.where for ex in a.dev} & {ex.where for ex in a.train}
    lines = [int(ex.where.rsplit(":", 1)[1]) for ex in a.dev]
    assert lines == sorted(lines)
    other = load_split("sep_gen", spec.model_copy(update={"holdout_seed": 2}), str(data), "full")
    assert [ex.where for ex in other.dev] != [ex.where for ex in a.dev]
    ex = a.train[0]
    assert ex.label.endswith("新闻") and ex.label[:2] in ex.texts[0] and "\t" not in ex.texts[0]


def test_seq2seq_rows_carry_the_prompted_source_and_the_target_to_its_own_width(data):
    c = cfg(data)
    split = finetune.plan(c)["splits"]["sep_gen"]["full"]
    tok = load_tokenizer("bert-chinese-sentinels")
    special = special_ids(tok).as_dict()
    enc = Encoder(tok, 40, "head")
    rows = encode_generation(split, split.train[:4], enc, special, True, True, decoder=False)
    ex = split.train[0]
    src = rows[0]["input_ids"][rows[0]["attention_mask"] == 1].tolist()
    assert src[0] == special["cls"] and src[-1] == special["sep"]
    assert tok.decode(src[1:-1]).replace(" ", "") == (ex.texts[0] + "。标题：").lower()
    tgt = [t for t in rows[0]["labels"].tolist() if t != IGNORE]
    assert tok.decode(tgt[:-1]).replace(" ", "") == ex.label and tgt[-1] == special["sep"]
    assert rows[0]["labels"].shape == (8,)  # max_target_len
    batch = collate_rows({k: np.stack([r[k] for r in rows]) for k in rows[0]})
    assert batch["labels"].shape[1] == max(len([t for t in r["labels"] if t != IGNORE]) for r in rows)


def test_clm_rows_put_the_loss_on_the_target_only_and_evaluate_from_the_prompt(data):
    c = cfg(data, "model.family=wenzhong", "methods=[clm]", "tokenizer.source=bert-chinese")
    split = finetune.plan(c)["splits"]["sep_gen"]["full"]
    tok = load_tokenizer("bert-chinese")
    special = special_ids(tok).as_dict()
    enc = Encoder(tok, 40, "head")
    (row,) = encode_generation(split, split.train[:1], enc, special, True, True, decoder=True)
    ids, labels = row["input_ids"][row["attention_mask"] == 1], row["labels"][row["attention_mask"] == 1]
    n_target = int((labels != IGNORE).sum())
    assert (labels[:-n_target] == IGNORE).all() and (labels[-n_target:] == ids[-n_target:]).all()
    assert tok.decode(ids[-n_target:-1].tolist()).replace(" ", "") == split.train[0].label
    (dev,) = encode_generation(split, split.dev[:1], enc, special, True, False, decoder=True)
    assert "labels" not in dev and dev["input_ids"][int(dev["attention_mask"].sum()) - 1] == special["sep"]
    # the prompt leaves room for the target: decoding never runs past max_len (the model's positions)
    long = split.dev[0].__class__(id=0, texts=["长" * 200], label="标题")
    (cut,) = encode_generation(split, [long], enc, special, True, False, decoder=True)
    assert int(cut["attention_mask"].sum()) <= 40 - split.spec.max_target_len


def test_batched_generation_stops_at_the_end_token_and_decodes_text():
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = load_tokenizer("bert-chinese")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=tok.get_vocab_size(), n_embd=32, n_layer=1, n_head=2)
    ).eval()
    rows = [
        tok.encode("今天天气", add_special_tokens=False).ids,
        tok.encode("北京", add_special_tokens=False).ids,
    ]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    batched = generate_ids(model, ids, mask, decoder=True, max_new_tokens=6, settings=None, eos=102, pad=0)
    for r, out in zip(rows, batched, strict=True):  # batching (left padding) changes nothing
        one = generate_ids(model, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long), decoder=True,
                           max_new_tokens=6, settings=None, eos=102, pad=0)[0]  # fmt: skip
        assert out == one and len(out) <= 6 and 102 not in out
    beams = generate_ids(model, ids, mask, decoder=True, max_new_tokens=6, eos=102, pad=0,
                         settings={"num_beams": 3, "no_repeat_ngram_size": 2})  # fmt: skip
    assert all(len(b) <= 6 for b in beams)
    s1 = generate_ids(model, ids, mask, decoder=True, max_new_tokens=6, eos=102, pad=0,
                      settings={"do_sample": True, "top_k": 20, "seed": 7})  # fmt: skip
    s2 = generate_ids(model, ids, mask, decoder=True, max_new_tokens=6, eos=102, pad=0,
                      settings={"do_sample": True, "top_k": 20, "seed": 7})  # fmt: skip
    assert s1 == s2  # seeded sampling repeats
    assert isinstance(decode_text(tok, batched[0]), str)


def test_methods_and_shapes_that_do_not_fit_are_refused_before_the_cluster(data):
    with pytest.raises(
        finetune.FinetuneError, match=r"head on task sep_gen \(generation\): a generation task needs"
    ):
        finetune.plan(cfg(data, "methods=[head]", "model.family=erlangshen", "tokenizer.source=bert-chinese"))
    with pytest.raises(
        finetune.FinetuneError, match=r"seq2seq on task sep_single \(single\): seq2seq generates text"
    ):
        finetune.plan(cfg(data, "task.names=[sep_single]", "methods=[seq2seq]"))
    with pytest.raises(finetune.FinetuneError, match="erlangshen is not fine-tuned with seq2seq"):
        finetune.plan(cfg(data, "model.family=erlangshen", "tokenizer.source=bert-chinese"))
    with pytest.raises(ConfigError, match=r"prompt '\{title\}' has no \{text\}"):
        cfg(data, "task_specs.sep_gen.prompt='{title}'")
    with pytest.raises(ConfigError, match="a generation task is scored by rougeL, not accuracy"):
        cfg(data, "task_specs.sep_gen.metric=accuracy")


def test_a_holdout_larger_than_the_file_and_an_empty_target_are_named(data, tmp_path):
    c = cfg(data)
    spec = finetune.task_specs(c)["sep_gen"]
    with pytest.raises(TaskDataError, match="cannot hold out 500 of 160 records"):
        load_split("sep_gen", spec.model_copy(update={"holdout": 500}), str(data), "full")
    bad = tmp_path / "sep_gen"
    bad.mkdir()
    lines = (data / "sep_gen/title.tsv").read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\t "
    (bad / "title.tsv").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(TaskDataError, match=r"title.tsv:4: field 'target' \(the target\) is empty"):
        load_split("sep_gen", spec, str(tmp_path), "full")
    split = load_split("sep_gen", spec, str(tmp_path), "full", max_bad_fraction=0.05)
    assert len(split.train) + len(split.dev) == 159


def test_builtin_csl_and_lcsts_readers_on_published_rows():
    """CSL title/keywords and LCSTS as published: the first rows of each file, shipped in tests/data."""
    for name, first in (("csl_title", "一种基于平方和"), ("csl_keywords", "修正Rodrigues参数模型_")):
        spec = task_spec(name)
        assert spec.shape == "generation" and spec.metric == "rougeL" and spec.holdout == 200
        split = load_split(name, spec.model_copy(update={"holdout": 3}), str(TESTDATA), "full")
        assert (len(split.train), len(split.dev)) == (9, 3)
        assert all(ex.label and len(ex.texts[0]) > 40 for ex in split.train + split.dev)
        assert not any(ex.texts[0].startswith("to ") for ex in split.train)  # the prefix column is not text
        (line1,) = [ex for ex in split.train + split.dev if ex.where.endswith(":1")]
        assert line1.label.startswith(first)
    spec = task_spec("lcsts").model_copy(update={"train_file": "sample.tsv", "dev_file": "sample.tsv"})
    split = load_split("lcsts", spec, str(TESTDATA), "full")
    assert len(split.dev) == 12 and split.dev[0].label == "对赌协议的18个致命陷阱"
    assert split.dev[0].texts[0].startswith("很多创业者对对赌协议谈虎色变")


def test_inputs_longer_than_the_models_positions_are_refused_before_the_cluster(data, tmp_path):
    from tests.model_folders import gpt2_folder

    folder = gpt2_folder(tmp_path / "short", n_positions=32)
    c = cfg(
        data, f"model.from_pretrained={folder}", "model.family=wenzhong", "methods=[clm]", "task.max_len=40"
    )
    with pytest.raises(
        finetune.FinetuneError, match=r"task.max_len 40 is longer than the 32 positions .*lower it to 32"
    ):
        finetune.plan(c)
    c = cfg(
        data, f"model.from_pretrained={folder}", "model.family=wenzhong", "methods=[clm]", "task.max_len=32"
    )
    assert finetune.plan(c)["splits"]["sep_gen"]["full"].dev


def test_a_stream_left_early_stops_its_generation_and_frees_the_model(tmp_path):
    import threading

    from fs_ray.serving.inference import Generator
    from tests.model_folders import gpt2_folder

    gen = Generator(str(gpt2_folder(tmp_path / "gpt2", n_positions=2100)))
    cancelled = threading.Event()
    stream = gen.stream("今天天气", 2000, {}, cancelled)
    pieces = [next(stream), next(stream)]
    stream.close()  # the consumer goes away after two pieces
    assert cancelled.is_set() and [n for _, n in pieces] == [1, 2]
    deadline = time.monotonic() + 10
    while (
        any(t.name == "fs_ray-generate-stream" for t in threading.enumerate()) and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert not any(t.name == "fs_ray-generate-stream" for t in threading.enumerate())
    assert gen._lock.acquire(timeout=1)  # nothing holds the model any more
    gen._lock.release()
    # a card-less model streams what it generates whole
    whole = gen.generate("今天天气", 20)
    assert "".join(p for p, _ in gen.stream("今天天气", 20, {}, threading.Event())) == whole
