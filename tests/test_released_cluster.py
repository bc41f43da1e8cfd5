"""Released checkpoints end to end on a real local Ray cluster: a Randeng-T5 layout (spiece.model,
FengShen's sentinels) prepared-for, continued with span corruption and exported; a released
Erlangshen sentiment classifier fine-tuned on the shipped eprstmt task and exported. Each export
must keep the tokenizer files the model came with and reload with the logits training computed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

from fs_ray.assets import DEMO_CORPUS
from fs_ray.config import load_config
from fs_ray.data.corpus import prepare
from fs_ray.run_configs import FinetuneConfig, PrepareConfig, PretrainConfig
from fs_ray.serving.inference import Generator, TaskModel
from fs_ray.training import finetune
from fs_ray.training.pretrain import PretrainError, pretrain
from tests.released import layout


def _prepare(src, out, tokenizer: str) -> str:
    cfg = load_config(
        PrepareConfig,
        None,
        [f"input.paths=[{src}]", f"output.dir={out}", "pack.seq_len=64", f"tokenizer.source={tokenizer}"],
    )
    prepare(cfg, log=lambda *_: None)
    return str(out)


def _pretrain_cfg(tmp_path, corpus: str, folder: str, *more: str) -> PretrainConfig:
    return load_config(
        PretrainConfig,
        None,
        [
            f"data.prepared_dir={corpus}",
            f"model.from_pretrained={folder}",
            f"run.storage_path={tmp_path / 'runs'}",
            "run.name=randeng-continued",
            "optim.max_steps=2",
            "optim.micro_batch_size=4",
            "checkpoint.every_n_steps=2",
            "scaling.num_workers=1",
            "scaling.cpus_per_worker=1",
            *more,
        ],
    )


@pytest.mark.timeout(900)
def test_released_t5_continues_and_released_classifier_finetunes_then_both_export_faithfully(
    ray_local, tmp_path
):
    t5 = str(layout("Randeng-T5-77M").build(tmp_path / "Randeng-T5-77M"))
    src = tmp_path / "docs.txt"
    src.write_text("\n".join(DEMO_CORPUS.read_text(encoding="utf-8").split("\n")[:200]), encoding="utf-8")

    # a corpus of another vocabulary is refused before any worker starts, naming both and the fix
    bert_corpus = _prepare(src, tmp_path / "bert", "bert-chinese-sentinels")
    with pytest.raises(PretrainError, match=rf"tokenizer.source={t5}"):
        pretrain(_pretrain_cfg(tmp_path, bert_corpus, t5))

    # prepared with the model's own tokenizer: its sentinels are FengShen's (the last ids)
    corpus = _prepare(src, tmp_path / "t5corpus", t5)
    manifest = json.loads((tmp_path / "t5corpus" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["tokenizer"]["special_ids"]["sentinels"][:2] == [2999, 2998]
    logs: list[str] = []
    summary = pretrain(_pretrain_cfg(tmp_path, corpus, t5), log=logs.append)
    assert any("note: model.family: randeng" in line for line in logs)  # taken from the folder
    export = summary["export"]
    for name in ("spiece.model", "tokenizer_config.json", "special_tokens_map.json"):
        assert Path(export, name).read_bytes() == Path(t5, name).read_bytes(), name
    record = json.loads(Path(export, "fs_ray_export.json").read_text(encoding="utf-8"))
    assert record["family"] == "randeng" and record["verified_max_abs_logit_diff"] <= 1e-4
    model = AutoModelForSeq2SeqLM.from_pretrained(export)
    assert type(model).__name__ == "MT5ForConditionalGeneration"
    assert model.config.vocab_size == 3000  # nothing resized
    # its own output projection, as released (transformers 5 reports tie_word_embeddings=True in
    # memory for every T5, but loads an untied lm_head when the checkpoint has one)
    assert model.lm_head.weight is not model.shared.weight
    assert json.loads(Path(export, "config.json").read_text(encoding="utf-8"))["tie_word_embeddings"] is False
    gen = Generator(export)
    assert (gen.eos, gen.pad, gen.decoder_start) == (1, 0, 0)
    assert isinstance(gen.generate("今天天气", max_new_tokens=4), str)

    # the released sentiment classifier (Negative/Positive) fine-tuned on eprstmt keeps its head
    sentiment = str(layout("Erlangshen-Roberta-110M-Sentiment").build(tmp_path / "Sentiment"))
    cfg = load_config(
        FinetuneConfig,
        None,
        [
            f"model.from_pretrained={sentiment}",
            f"run.storage_path={tmp_path / 'runs'}",
            "run.name=sentiment",
            "task.names=[eprstmt]",
            "task.splits=[few_all]",
            "methods=[head]",
            "task.max_len=64",
            "optim.epochs=1",
            "optim.micro_batch_size=8",
            "scaling.num_workers=1",
            "scaling.cpus_per_worker=1",
        ],
    )
    result = finetune.run(cfg, log=lambda *_: None)
    assert result["records"][0]["method"] == "head"
    export = str(tmp_path / "runs" / "sentiment" / "eprstmt" / "head" / "split_few_all" / "export")
    assert Path(export, "vocab.txt").read_bytes() == Path(sentiment, "vocab.txt").read_bytes()
    reloaded = AutoModelForSequenceClassification.from_pretrained(export)
    assert reloaded.config.id2label == {0: "Negative", 1: "Positive"}
    task = TaskModel(export)
    ((label, _scores),) = task.classify(["这个手机很好用"])
    assert task.labels == ["Negative", "Positive"] and label in task.labels
