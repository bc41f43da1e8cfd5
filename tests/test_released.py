"""Released checkpoints in, faithfully (fast tier: no Ray cluster).

Every layout of tests/released.py goes through what a user does with it: open and classify the
folder, one continued-pretraining step under its family's objective on a corpus prepared with its
own tokenizer, one fine-tuning step through the fine-tuning plan, save the way export does
(weights + tokenizer.json + its own tokenizer files), reload in ``transformers`` with identical
logits and the tokenizer files with their own format's loader, and answer one request with the
class a Serve replica runs. Each refusal the issue lists is asserted by its message. The
cluster run (prepare -> pretrain -> export; fine-tune -> export) is tests/test_released_cluster.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fs_ray.config import load_config
from fs_ray.data.encoding import collate_rows
from fs_ray.data.tokenization import (
    JIEBA_MARKER,
    load_tokenizer,
    special_ids,
    tokenizer_json,
    vocab_fingerprint,
)
from fs_ray.families import build_model
from fs_ray.objectives import get_method, get_objective
from fs_ray.pretrained import ModelFolder, check_corpus_tokenizer, original_tokenizer_files
from fs_ray.run_configs import FinetuneConfig, ModelSection
from fs_ray.serving.inference import Generator, MaskedLM, TaskModel, model_kind
from fs_ray.training import finetune
from fs_ray.training.export import save_tokenizer
from tests.pretrain_batches import demo_batches
from tests.released import LAYOUTS
from tests.task_data import SPECS, _write_tasks

TEXT = "今天北京的天气很好，我们去公园散步。"
AUTO_OF_KIND = {
    "mlm": "AutoModelForMaskedLM",
    "classifier": "AutoModelForSequenceClassification",
    "clm": "AutoModelForCausalLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("released")
    return {x.name: str(x.build(root / f"m{i}")) for i, x in enumerate(LAYOUTS)}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tasks")
    _write_tasks(root / "data", n_single=16)
    return root


def finetune_cfg(tasks: Path, folder: str, *more: str) -> FinetuneConfig:
    return load_config(
        FinetuneConfig,
        None,
        [
            *SPECS,
            f"task.data_root={tasks / 'data'}",
            f"run.storage_path={tasks / 'runs'}",
            f"model.from_pretrained={folder}",
            "task.names=[sep_single]",
            "methods=[head]",
            "task.max_len=32",
            *more,
        ],
    )


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _step(module, inputs) -> float:
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    loss = module(**inputs)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _probe(tokenizer, kind: str) -> dict[str, torch.Tensor]:
    ids = tokenizer.encode(TEXT).ids[:24]
    batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    if kind == "seq2seq":
        batch["decoder_input_ids"] = torch.tensor([ids[:5]])
    return batch


@pytest.mark.parametrize("lay", LAYOUTS, ids=[x.name for x in LAYOUTS])
def test_released_layout_loads_continues_finetunes_saves_and_serves(lay, folders, tasks, tmp_path):
    folder = folders[lay.name]
    mf = ModelFolder.open(folder)
    assert (mf.kind, mf.family.name) == (lay.kind, lay.family)
    assert model_kind(folder) == lay.kind  # what serving reads, with or without `architectures`
    tok = load_tokenizer(folder)
    model = None

    if lay.objective:  # continued pretraining on a corpus prepared with the folder's own tokenizer
        objective = get_objective(lay.objective)
        batches, special, vocab = demo_batches(folder, seq_len=48)
        model = build_model(ModelSection(from_pretrained=folder), objective.auto_class, vocab, 48, special)
        assert model.get_input_embeddings().num_embeddings == mf.vocab_size  # never resized
        before = _params(model)
        loss = _step(
            objective.wrap(model),
            objective.inputs(
                batches[0], special, vocab, torch.Generator().manual_seed(0), ctx=objective.context(tok)
            ),
        )
        assert np.isfinite(loss) and 0.5 * np.log(vocab) < loss < 3 * np.log(vocab)
        assert any(not torch.equal(before[k], v) for k, v in model.named_parameters())

    if lay.method:  # one fine-tuning step through the plan (the refusals it makes are tested below)
        reinit = ["model.reinit_head=true"] if lay.name.endswith("Sentiment") else []
        method = get_method(lay.method)
        generates = method.check_shape("generation") is None  # seq2seq / clm: the title task
        task, shape = ("sep_gen", "generation") if generates else ("sep_single", "single")
        cfg = finetune_cfg(tasks, folder, f"methods=[{lay.method}]", f"task.names=[{task}]", *reinit)
        p = finetune.plan(cfg)
        split = p["splits"][task]["full" if generates else "0"]
        from fs_ray.data.encoding import Encoder

        enc = Encoder(p["tokenizer"], 32, "head")
        rows = finetune._rows(split, split.train[:8], enc, lay.method, True, True, cfg)
        batch = collate_rows({k: np.stack([r[k] for r in rows]) for k in rows[0] if k not in ("uid",)})
        special = special_ids(p["tokenizer"]).as_dict()
        model = build_model(
            cfg.model,
            method.auto_class(shape),
            0,
            32,
            special,
            head_kwargs=method.head_kwargs(shape, split.labels),
        )
        loss = _step(method.wrap(model, enc.yes), {k: v for k, v in batch.items() if k != "row"})
        assert np.isfinite(loss)

    if model is None:  # a released classifier served as it is
        import transformers

        model = getattr(transformers, AUTO_OF_KIND[lay.kind]).from_pretrained(folder)

    # save as export does: weights, tokenizer.json, and the tokenizer files the folder came with
    out = tmp_path / "export"
    model.save_pretrained(out)
    originals = original_tokenizer_files(folder)
    assert set(lay.files) <= set(originals)
    staged = tmp_path / "originals"
    staged.mkdir()
    for name, data in originals.items():
        (staged / name).write_bytes(data)
    save_tokenizer(
        str(out),
        tokenizer_json(tok),
        special_ids(tok, folder).as_dict(),
        {n: str(staged / n) for n in originals},
    )
    for name in lay.files:
        assert (out / name).read_bytes() == Path(folder, name).read_bytes(), name
    assert vocab_fingerprint(load_tokenizer(str(out))) == vocab_fingerprint(tok)

    # reload: transformers and fs_ray give the same logits, each tokenizer format gives the same ids
    import transformers

    kind = ModelFolder(str(out)).kind
    reloaded = getattr(transformers, AUTO_OF_KIND[kind]).from_pretrained(out).eval()
    model.eval()
    probe = _probe(tok, kind)
    ours = build_model(ModelSection(from_pretrained=str(out)), AUTO_OF_KIND[kind], 0, 48, {}).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**probe).logits, model(**probe).logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours(**probe).logits, model(**probe).logits, rtol=0, atol=1e-5)
    ids = tok.encode(TEXT, add_special_tokens=False).ids
    assert load_tokenizer(str(out)).encode(TEXT, add_special_tokens=False).ids == ids
    jieba_words = JIEBA_MARKER in tokenizer_json(tok)
    if jieba_words:  # Pegasus: FengShen's algorithm on the export's own vocab.txt gives the same ids
        from tests.test_randeng_pegasus import published_ids

        assert published_ids(TEXT, out / "vocab.txt")[:-1] == ids
        assert len(ids) < len(TEXT) - 2  # words, not characters
    else:  # tokenizer.json alone cannot run jieba; every other format it carries exactly
        assert (
            transformers.AutoTokenizer.from_pretrained(out)(TEXT, add_special_tokens=False)["input_ids"]
            == ids
        )
    if "vocab.txt" in lay.files and not jieba_words:
        from tokenizers import BertWordPieceTokenizer

        wordpiece = BertWordPieceTokenizer(str(out / "vocab.txt"), lowercase=True)
        assert wordpiece.encode(TEXT, add_special_tokens=False).ids == ids
    if "spiece.model" in lay.files:
        import sentencepiece as spm

        assert spm.SentencePieceProcessor(model_file=str(out / "spiece.model")).encode(TEXT) == ids
    if "merges.txt" in lay.files:
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
        assert bpe.encode(TEXT).ids == ids

    # one request, answered by the class a Serve replica runs
    if kind == "mlm":
        (masks,) = MaskedLM(str(out)).fill_mask(["今天[MASK]气很好"], top_k=3)
        assert len(masks) == 1 and len(masks[0]) == 3
    elif kind == "classifier":
        labels = TaskModel(str(out)).labels
        ((label, scores),) = TaskModel(str(out)).classify([TEXT])
        assert label in labels and abs(sum(s for _, s in scores) - 1) < 1e-5
    else:
        gen = Generator(str(out))
        ids = mf.generation_ids  # the model's own; pad falls back to eos where it names none (GPT2)
        if ids["eos"] is None:  # a config that names none (Bigan's, Zhouwenwang's): the vocabulary's end token
            ends = [tok.token_to_id(t) for t in ("<|endoftext|>", "</s>", "[SEP]")]
            ids["eos"] = next(i for i in ends if i is not None)
            if ends[0] is not None:  # Bigan: FengShen's <|endoftext|>, after the SentencePiece pieces
                assert ids["eos"] == len(tok.get_vocab()) - 1
        assert (gen.eos, gen.pad) == (ids["eos"], ids["pad"] if ids["pad"] is not None else ids["eos"])
        assert isinstance(gen.generate("今天天气", max_new_tokens=4), str)


def test_randeng_t5_sentinels_are_fengshens_last_ids_and_literal_ones_win(folders):
    """A released Randeng-T5 (extra_ids 0) has no <extra_id_N>: its sentinels are the last ids of the
    vocabulary, the k-th span getting len-1-k as FengShen's collator does; a vocabulary with literal
    sentinels keeps them; a BERT folder has none."""
    t5 = folders["Randeng-T5-77M"]
    tok = load_tokenizer(t5)
    special = special_ids(tok, t5)
    n = tok.get_vocab_size(with_added_tokens=True)
    assert special.sentinels[:3] == (n - 1, n - 2, n - 3) and len(special.sentinels) == 100
    assert special_ids(tok).sentinels == ()  # the rule needs the folder: a bare tokenizer has no convention
    literal = special_ids(load_tokenizer("bert-chinese-sentinels"), "bert-chinese-sentinels")
    assert literal.sentinels[:2] == (21128, 21129)
    assert (
        special_ids(
            load_tokenizer(folders["Erlangshen-Roberta-110M"]), folders["Erlangshen-Roberta-110M"]
        ).sentinels
        == ()
    )
    # span corruption on that corpus puts those ids in the input, and asks for them in the targets
    objective = get_objective("span")
    batches, special_d, vocab = demo_batches(t5, seq_len=48)
    assert objective.check(special_d) is None
    inputs = objective.inputs(batches[0], special_d, vocab, torch.Generator().manual_seed(0))
    used = set(inputs["input_ids"].flatten().tolist()) & set(special.sentinels)
    assert n - 1 in used and used <= set(special.sentinels)
    # and a corpus without sentinels is refused with the right advice for a released model
    problem = objective.check(demo_batches(folders["Erlangshen-Roberta-110M"], seq_len=48)[1])
    assert "tokenizer.source=<the model folder>" in problem and "extra_ids 0" in problem


def test_a_corpus_tokenized_otherwise_is_refused_naming_both_vocabularies(folders):
    t5 = ModelFolder.open(folders["Randeng-T5-77M"])
    bert_json = load_tokenizer("bert-chinese-sentinels").to_str()
    problem = check_corpus_tokenizer(bert_json, "bert-chinese-sentinels", t5)
    assert "bert-chinese-sentinels (vocabulary of 21228" in problem and "vocabulary of 3000" in problem
    assert f"tokenizer.source={t5.path}" in problem
    gpt2 = ModelFolder.open(folders["Wenzhong-GPT2-110M"])
    problem = check_corpus_tokenizer(load_tokenizer("bert-chinese").to_str(), "bert-chinese", gpt2)
    assert "21128" in problem and "1201" in problem
    # the same vocabulary under another name is no mismatch (contents, not names)
    bert = ModelFolder.open(folders["Erlangshen-Roberta-110M"])
    assert check_corpus_tokenizer(load_tokenizer("bert-chinese").to_str(), "bert-chinese", bert) is None
    assert check_corpus_tokenizer(load_tokenizer(t5.path).to_str(), t5.path, t5) is None


def test_released_heads_fit_or_are_refused_before_any_worker(folders, tasks):
    sentiment = folders["Erlangshen-Roberta-110M-Sentiment"]
    with pytest.raises(finetune.FinetuneError) as err:  # 2 named labels that are not the task's
        finetune.plan(finetune_cfg(tasks, sentiment))
    msg = str(err.value)
    assert "task sep_single has 2 labels (neg, pos)" in msg and "(Negative, Positive)" in msg
    assert "model.reinit_head=true" in msg
    p = finetune.plan(finetune_cfg(tasks, sentiment, "model.reinit_head=true"))
    assert any("re-initialised" in n for n in p["notes"])
    with pytest.raises(
        finetune.FinetuneError, match=r"task sep_tag has 7 labels .* released classifier with 2"
    ):
        finetune.plan(
            finetune_cfg(tasks, folders["Erlangshen-Roberta-110M-Similarity"], "task.names=[sep_tag]")
        )
    # the same names in another order: the head keeps its order (output i still means label i)
    sent = tasks / "data" / "sent"
    sent.mkdir(exist_ok=True)
    for name in ("train_0.json", "dev_0.json"):
        rows = [
            {"id": i, "sentence": t, "label": y}
            for i, (t, y) in enumerate([("好", "Positive"), ("坏", "Negative")] * 4)
        ]
        (sent / name).write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
    p = finetune.plan(
        finetune_cfg(
            tasks, sentiment, "task.names=[sent]",
            "task_specs.sent={shape: single, path: sent, text_fields: [sentence], labels: [Positive, Negative], "
            "splits: ['0'], test_file: null}",
        )
    )  # fmt: skip
    assert p["splits"]["sent"]["0"].labels == ["Negative", "Positive"]
    assert any("labels ordered as the released head's" in n for n in p["notes"])
    # a family's methods come from the folder, not from model.family's default
    with pytest.raises(finetune.FinetuneError, match="wenzhong is not fine-tuned with head"):
        finetune.plan(finetune_cfg(tasks, folders["Wenzhong-GPT2-110M"]))
    with pytest.raises(finetune.FinetuneError, match=r"model.family=wenzhong but .* is a bert model"):
        finetune.plan(finetune_cfg(tasks, folders["Erlangshen-Roberta-110M"], "model.family=wenzhong"))


def test_from_pretrained_names_what_it_is_not(tasks, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        finetune.FinetuneError,
        match=r"IDEA-CCNL/Erlangshen-Roberta-110M is not a local folder and the Hugging Face hub",
    ):
        finetune.plan(finetune_cfg(tasks, "IDEA-CCNL/Erlangshen-Roberta-110M"))
    with pytest.raises(finetune.FinetuneError, match="not a folder, an object-store URI"):
        finetune.plan(finetune_cfg(tasks, str(tmp_path / "nowhere" / "x" / "y")))
    (tmp_path / "weights_only").mkdir()
    with pytest.raises(finetune.FinetuneError, match=r"has no config\.json"):
        finetune.plan(finetune_cfg(tasks, str(tmp_path / "weights_only")))


def test_an_object_store_folder_is_copied_once_per_node(folders, tmp_path, monkeypatch):
    import pyarrow.fs as pafs

    from fs_ray.pretrained import fetch_folder

    monkeypatch.setenv("FS_RAY_CACHE", str(tmp_path / "cache"))
    src = folders["Erlangshen-Roberta-110M"]
    local = fetch_folder(pafs.LocalFileSystem(), src, key="s3://bucket/models/erlangshen")
    assert sorted(os.listdir(local)) == sorted(os.listdir(src))
    assert fetch_folder(pafs.LocalFileSystem(), src, key="s3://bucket/models/erlangshen") == local
    assert ModelFolder(local).kind == "mlm"


def test_released_pair_classifiers_take_pairs_without_a_task_card(folders):
    """Similarity / NLI classifiers carry no fs_ray_task.json: serving accepts single texts and pairs,
    and evaluation scores them with their own head on the task the user names."""
    nli = TaskModel(folders["Erlangshen-Roberta-330M-NLI"])
    ((label, scores),) = nli.classify(["他在跑步"], ["他在运动"])
    assert len(scores) == 3 and label in nli.labels
    assert len(nli.classify(["他在跑步", "下雨了"])) == 2
    from jobs.evaluate import card_defaults

    assert "methods=[head]" in card_defaults(
        [f"model.from_pretrained={folders['Erlangshen-Roberta-110M-Similarity']}"]
    )
    assert "methods=[unimc_zero]" in card_defaults(
        [f"model.from_pretrained={folders['Erlangshen-Roberta-110M']}"]
    )


def test_generation_reads_the_models_own_ids(folders, tmp_path):
    """A model whose config names eos/pad/decoder-start ids generates with those, not with ids guessed
    from token names: here a GPT2 whose generation_config.json names an eos the vocabulary calls '!'."""
    import shutil

    g = tmp_path / "gpt2"
    shutil.copytree(folders["Wenzhong-GPT2-110M"], g)
    eos = load_tokenizer(str(g)).token_to_id("!")
    (g / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "pad_token_id": eos}))
    gen = Generator(str(g))
    assert (gen.eos, gen.pad) == (eos, eos)
    t5 = Generator(folders["Randeng-T5-77M (config.json without architectures)"])
    assert (t5.kind, t5.eos, t5.pad, t5.decoder_start) == ("seq2seq", 1, 0, 0)


def test_every_layout_is_in_the_readme_table():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Released checkpoints", 1)[1].split("\n## ", 1)[0]
    for x in LAYOUTS:
        assert f"| {x.name.split(' (')[0]} " in table, x.name
