"""Generation fine-tuning end to end on a private Ray cluster: a tiny Randeng (seq2seq, ZeRO-3,
decoding synced across ranks) and a tiny Wenzhong (clm) learn a separable title task far above the
lead floor; predictions, metrics and the export agree; a killed worker resumes mid-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fs_ray.config import load_config
from fs_ray.run_configs import FinetuneConfig
from fs_ray.training.finetune import run
from tests.faults import WorkerKiller, checkpoint_registered
from tests.task_data import SPECS, _write_tasks


def _cfg(tmp_path: Path, *more: str) -> FinetuneConfig:
    return load_config(
        FinetuneConfig,
        None,
        [*SPECS, f"task.data_root={tmp_path / 'data'}", f"run.storage_path={tmp_path / 'runs'}", "run.name=gen",
         "task.names=[sep_gen]", "task.max_len=40", "task.truncation=head", "optim.lr=2e-3", "optim.epochs=12",
         "optim.micro_batch_size=8", "optim.warmup_steps=2", "checkpoint.every_n_epochs=6", "scaling.num_workers=2",
         *more],
    )  # fmt: skip


def _exact(path: Path) -> float:
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    return sum(r["gold"] == r["pred"] for r in rows) / len(rows)


@pytest.mark.parametrize(
    ("family", "method", "vocab", "zero"),
    [("randeng", "seq2seq", "bert-chinese-sentinels", 3), ("wenzhong", "clm", "bert-chinese", 2)],
)
def test_generation_fine_tuning_learns_a_separable_task_above_the_lead_floor(
    ray_local, tmp_path, family, method, vocab, zero
):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from fs_ray.data.tokenization import load_tokenizer
    from fs_ray.generation import decode_text, generate_ids

    _write_tasks(tmp_path / "data")
    cfg = _cfg(tmp_path, f"model.family={family}", f"methods=[{method}, lead]", f"tokenizer.source={vocab}",
               f"deepspeed.zero_stage={zero}", "export=all")  # fmt: skip
    result = run(cfg, log=print)
    values = {r["method"]: r for r in result["records"]}
    run_dir = Path(result["run_dir"]) / "sep_gen"
    exact = _exact(run_dir / method / "split_full" / "dev_predictions.jsonl")
    assert exact >= 0.8, values[method]["metrics"]  # always the commonest title: about 0.25
    assert values[method]["value"] >= 0.9 and values["lead"]["value"] < 0.2, values
    assert set(values[method]["metrics"]) == {"rouge1", "rouge2", "rougeL", "bleu4"}
    assert [h["epoch"] for h in values[method]["history"]] == [6, 12]
    assert "| sep_gen | lead | rougeL |" in (Path(result["run_dir"]) / "results.md").read_text(
        encoding="utf-8"
    )

    # the export generates the same titles outside Ray, from its own files and task card
    export = run_dir / method / "split_full" / "export"
    card = json.loads((export / "fs_ray_task.json").read_text(encoding="utf-8"))
    assert (card["shape"], card["method"], card["max_target_len"]) == ("generation", method, 8)
    auto = AutoModelForSeq2SeqLM if method == "seq2seq" else AutoModelForCausalLM
    model = auto.from_pretrained(export).eval()
    tok = load_tokenizer(str(export))
    preds = [
        json.loads(x)
        for x in (run_dir / method / "split_full" / "dev_predictions.jsonl").read_text().splitlines()
    ]
    lines = (tmp_path / "data/sep_gen/title.tsv").read_text(encoding="utf-8").splitlines()
    text = lines[preds[0]["id"]].split("\t")[1]  # a headerless TSV's record id is its line index
    ids = tok.encode(card["prompt"].format(text=text), add_special_tokens=False).ids
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    row = torch.tensor([[cls, *ids, sep]])
    (out,) = generate_ids(model, row, torch.ones_like(row), decoder=method == "clm", max_new_tokens=8,
                          settings=card["decoding"], eos=sep, pad=0)  # fmt: skip
    assert decode_text(tok, out) == preds[0]["pred"]  # what the workers decoded for that record
    assert len(preds) == 40


def test_killed_worker_resumes_generation_fine_tuning_at_the_last_epoch(ray_local, tmp_path):
    _write_tasks(tmp_path / "data")
    # 120 rows / 2 workers / batch 8 = 8 steps per epoch; a checkpoint (and dev decoding) every 2 epochs
    cfg = _cfg(tmp_path, "model.family=randeng", "methods=[seq2seq]", "tokenizer.source=bert-chinese-sentinels",
               "optim.epochs=10", "checkpoint.every_n_epochs=2", "checkpoint.max_failures=1",
               "deepspeed.zero_stage=1")  # fmt: skip
    train_dir = tmp_path / "runs" / cfg.run.name / "train"

    killer = WorkerKiller(checkpoint_registered(train_dir))
    killer.start()
    try:
        result = run(cfg, log=print)
    finally:
        killer.stop()
    assert killer.killed, "no worker was killed"
    (record,) = result["records"]
    assert record["resumed_from_epoch"] in (2, 4, 6, 8)
    assert [h["epoch"] for h in record["history"]] == [2, 4, 6, 8, 10]
    assert record["value"] >= 0.9, record["metrics"]
