"""Task readers on tiny in-repo slices of every format, bad input, encodings, UniMC scoring, metrics."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from fs_ray.config import load_config
from fs_ray.data.encoding import (
    Encoder,
    coref_text,
    encode_head,
    encode_unimc,
    entities,
    entity_f1,
    option_groups,
)
from fs_ray.data.tasks import BUILTIN_TASKS, TaskDataError, TaskSpec, load_split, read_file, task_spec
from fs_ray.data.tokenization import load_tokenizer
from fs_ray.run_configs import FinetuneConfig
from fs_ray.training.finetune import (
    FinetuneError,
    plan,
    results_markdown,
    summarize,
    write_results,
    write_submission,
)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def enc():
    return Encoder(load_tokenizer("bert-chinese"), 64, "head")


@pytest.mark.parametrize(
    "name, split, shape, n_labels",
    [
        ("eprstmt", "0", "single", 2),
        ("tnews", "0", "single", 15),
        ("iflytek", "0", "single", 119),
        ("csldcp", "0", "single", 67),
        ("ocnli", "0", "pair", 3),
        ("chid", "0", "choice", 7),
        ("cluewsc", "0", "coref", 2),
        ("chnsenticorp", "full", "single", 2),
        ("smp2020_ewect", "full", "single", 6),
        ("msra_ner", "full", "tagging", 7),
    ],
)
def test_every_format_reads_its_slice(name, split, shape, n_labels):
    root = "asset://" if name == "eprstmt" else str(DATA)
    s = load_split(name, task_spec(name), root, split)
    assert s.spec.shape == shape and len(s.labels) == n_labels
    assert s.train and s.dev
    for ex in s.train + s.dev:
        assert all(ex.texts)
        if shape == "tagging":
            assert len(ex.tags) == len(ex.texts[0]) and set(ex.tags) <= set(s.labels)
        elif shape == "choice":
            assert 0 <= int(ex.label) < len(ex.candidates) and s.spec.blank in ex.texts[0]
        else:
            assert ex.label in s.labels
    if shape == "pair":
        assert len(s.train[0].texts) == 2
    if shape == "coref":
        ex = s.train[0]
        (a, b), (c, d) = ex.spans
        raw = json.loads((DATA / "fewclue/cluewsc/train_0.json").read_text(encoding="utf-8").split("\n")[0])
        assert (
            ex.texts[0][a:b] == raw["target"]["span1_text"]
            and ex.texts[0][c:d] == raw["target"]["span2_text"]
        )
        assert "【" + raw["target"]["span1_text"] + "】" in coref_text(ex)
    if name == "iflytek":  # label names come from the data's label_des
        assert (
            s.verbalizer[s.train[0].label]
            == json.loads((DATA / "fewclue/iflytek/train_0.json").read_text(encoding="utf-8").split("\n")[0])[
                "label_des"
            ]
        )
    if name == "tnews":
        assert s.verbalizer["103"] == "体育"
    if s.spec.test_file and not s.spec.test_labelled:
        assert s.test and all(ex.label is None for ex in s.test)


def test_csl_and_bustm_shapes_read_as_pairs(tmp_path):
    (tmp_path / "fewclue/csl").mkdir(parents=True)
    rows = [
        {"id": i, "abst": f"摘要{i}讲了很多", "keyword": ["词一", "词二"], "label": str(i % 2)}
        for i in range(4)
    ]
    for f in ("train_0.json", "dev_0.json"):
        (tmp_path / "fewclue/csl" / f).write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    s = load_split("csl", task_spec("csl"), str(tmp_path), "0", with_test=False)
    assert s.train[1].texts == ["摘要1讲了很多", "词一，词二"] and s.train[1].label == "1"


def _write(path: Path, lines: list) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines),
        encoding="utf-8",
    )
    return str(path)


SPEC = TaskSpec.model_validate(BUILTIN_TASKS["eprstmt"])


def test_bad_records_are_named_by_file_line_and_field(tmp_path):
    good = {"id": 1, "sentence": "很好", "label": "Positive"}
    path = _write(
        tmp_path / "f.json",
        [
            good,
            {"id": 2, "label": "Positive"},
            "{not json",
            {"id": 4, "sentence": "还行", "label": "Meh"},
            good,
        ],
    )
    with pytest.raises(TaskDataError) as err:
        read_file(SPEC, path, True, SPEC.labels)
    msg = str(err.value)
    assert f"{path}:2: field 'sentence' is missing" in msg
    assert f"{path}:3: bad JSON" in msg
    assert f"{path}:4: field 'label'='Meh' is not a known label" in msg
    assert "3 of 5 records are bad" in msg
    examples, report = read_file(SPEC, path, True, SPEC.labels, max_bad_fraction=0.6)  # skip them instead
    assert [ex.id for ex in examples] == [1, 1]
    assert report.bad == {"missing_field": 1, "bad_json": 1, "unknown_label": 1}


def test_empty_text_is_a_counted_skip_and_u2028_stays_inside_a_record(tmp_path):
    path = _write(
        tmp_path / "f.json",
        [
            {"id": 1, "sentence": "  ", "label": "Positive"},
            {"id": 2, "sentence": "好\u2028用", "label": "Positive"},
        ],
    )
    examples, report = read_file(SPEC, path, True, SPEC.labels)
    assert report.skipped == {"empty_text": 1} and report.records == 2
    assert examples[0].texts == ["好\u2028用"]


def test_dev_labels_must_be_among_the_training_labels(tmp_path):
    folder = tmp_path / "t"
    _write(folder / "train_0.json", [{"s": "甲", "y": "a"}, {"s": "乙", "y": "b"}])
    _write(folder / "dev_0.json", [{"s": "甲", "y": "a"}, {"s": "丙", "y": "c"}])
    spec = TaskSpec(shape="single", path=str(folder), text_fields=["s"], label_field="y", test_file=None)
    with pytest.raises(TaskDataError, match=r"dev_0.json:2: field 'y'='c' is not a known label \(a, b\)"):
        load_split("t", spec, ".", "0")


def test_coref_span_that_is_not_where_it_says_is_bad(tmp_path):
    rec = {
        "idx": 0,
        "label": "true",
        "text": "张三说他来了",
        "target": {"span1_text": "张三", "span1_index": 0, "span2_text": "他", "span2_index": 1},
    }
    path = _write(tmp_path / "w.json", [rec])
    spec = task_spec("cluewsc")
    with pytest.raises(TaskDataError, match=r"w.json:1: field 'target.span2_index'=1 does not point at '他'"):
        read_file(spec, path, True, spec.labels)


def test_a_new_dataset_in_a_known_shape_is_config(tmp_path):
    folder = tmp_path / "reviews"
    _write(folder / "train.tsv", ["cls\ttitle\tbody", "1\t好\t很好用", "0\t差\t不好用"])
    _write(folder / "dev.tsv", ["cls\ttitle\tbody", "1\t棒\t喜欢"])
    cfg = load_config(
        FinetuneConfig,
        None,
        [
            "task.names=[reviews]",
            f"task.data_root={tmp_path}",
            "methods=[tfidf]",
            "task_specs.reviews={shape: pair, path: reviews, format: tsv, text_fields: [title, body], "
            "label_field: cls, splits: [full], train_file: train.tsv, dev_file: dev.tsv, test_file: null}",
        ],
    )
    s = plan(cfg)["splits"]["reviews"]["full"]
    assert s.labels == ["0", "1"] and s.dev[0].texts == ["棒", "喜欢"]


def test_plan_refuses_before_the_cluster(tmp_path):
    bad = [
        (["task.names=[nosuch]"], "task.names: unknown task 'nosuch'"),
        (["task.names=[msra_ner]", f"task.data_root={DATA}", "methods=[unimc]"], "UniMC scores options"),
        (["model.from_pretrained=/no/such/folder"], "model.from_pretrained"),
        (["task.names=[tnews]", f"task.data_root={tmp_path}"], "task tnews, split 0: " + str(tmp_path)),
    ]
    for overrides, message in bad:
        with pytest.raises(FinetuneError, match=message.replace("[", r"\[").replace("]", r"\]")):
            plan(load_config(FinetuneConfig, None, overrides))


def test_truncation_strategies_never_overflow(enc):
    ids = list(range(100))
    assert enc.cut(ids, 8) == ids[:8]
    assert Encoder(enc.tokenizer, 64, "tail").cut(ids, 8) == ids[-8:]
    assert Encoder(enc.tokenizer, 64, "head_tail").cut(ids, 8) == ids[:2] + ids[-6:]
    a, b = enc.fit_pair(list(range(50)), list(range(10)), 40)
    assert (len(a), len(b)) == (30, 10)
    a, b = enc.fit_pair(list(range(50)), list(range(60)), 40)
    assert (len(a), len(b)) == (20, 20)
    s = load_split("csldcp", task_spec("csldcp"), str(DATA), "0")
    for row in encode_head(s, s.train, enc, True) + encode_unimc(s, s.train, enc, True, False, 8):
        assert row["input_ids"].shape == (64,) and row["attention_mask"].sum() <= 64


def test_choice_rows_put_each_candidate_in_the_blank(enc):
    s = load_split("chid", task_spec("chid"), str(DATA), "0")
    row = encode_head(s, s.train[:1], enc, True)[0]
    ex = s.train[0]
    assert row["input_ids"].shape == (len(ex.candidates), 64) and row["label"] == int(ex.label)
    text = enc.tokenizer.decode(row["input_ids"][2].tolist())
    assert text.replace(" ", "").count(ex.candidates[2]) == 2  # as the option and inside the window


def test_unimc_scores_agree_with_a_hand_computation(enc):
    from transformers import BertConfig, BertForMaskedLM

    from fs_ray.objectives.losses import UniMCLoss

    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=21128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    ).eval()
    s = load_split("ocnli", task_spec("ocnli"), str(DATA), "0")
    rows = encode_unimc(s, s.dev[:2], enc, True, False, 8)
    ex = s.dev[0]
    # by hand: render "[CLS] [MASK] o1 [MASK] o2 [MASK] o3 [SEP] question [SEP] premise [SEP] hypothesis [SEP]"
    tok = enc.tokenizer
    ids, positions = [enc.cls], []
    for label in s.labels:
        positions.append(len(ids))
        ids += [enc.mask, *tok.encode(s.verbalizer[label], add_special_tokens=False).ids]
    ids += [enc.sep, *tok.encode(s.spec.question, add_special_tokens=False).ids, enc.sep]
    types = [0] * len(ids)  # options + question are segment 0, the texts segment 1
    for text in ex.texts:
        ids += [*tok.encode(text, add_special_tokens=False).ids, enc.sep]
    types += [1] * (len(ids) - len(types))
    assert rows[0]["input_ids"][: len(ids)].tolist() == ids
    with torch.no_grad():
        full = model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types])).logits[0]
        by_hand = [float(full[p, tok.token_to_id("是")]) for p in positions]
        batch = {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in rows[0] if k not in ("row",)}
        got = UniMCLoss(model, enc.yes).logits(**batch)
    assert got[0, :3].tolist() == pytest.approx(by_hand, abs=1e-4)
    assert torch.isinf(got[0, 3:]).all()  # padding options can never win


def test_unimc_splits_long_option_lists_and_trains_on_gold_plus_negatives(enc):
    s = load_split("iflytek", task_spec("iflytek"), str(DATA), "0")
    assert option_groups([[1, 2], [3], [4, 5, 6]], 5) == [[0, 1], [2]]
    rows = encode_unimc(s, s.dev[:1], enc, True, False, 16)
    covered = sorted(int(o) for r in rows for o in r["option_ids"] if o >= 0)
    assert covered == list(range(119)) and len(rows) > 1
    train = encode_unimc(s, s.train[:3], enc, True, True, 16, seed=1)
    for ex, row in zip(s.train[:3], train, strict=True):
        gold = s.labels.index(ex.label)
        assert row["option_ids"][row["label"]] == gold


def test_entity_f1_matches_a_hand_count():
    assert entities(["B-PER", "I-PER", "O", "B-LOC", "I-ORG", "I-ORG"]) == {
        ("PER", 0, 2),
        ("LOC", 3, 4),
        ("ORG", 4, 6),
    }
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O"]]
    # gold entities 3, predicted 2 (PER right, ORG too short): P = 1/2, R = 1/3
    assert entity_f1(gold, pred)["entity_f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))


def test_five_split_summary_is_mean_and_sample_std():
    values = [0.5, 0.6, 0.7, 0.65, 0.55]
    records = [
        {"task": "t", "method": "head", "split": str(i), "metric": "accuracy", "value": v, "seconds": 1.0}
        for i, v in enumerate(values)
    ] + [
        {
            "task": "t",
            "method": "head",
            "split": "few_all",
            "metric": "accuracy",
            "value": 0.9,
            "seconds": 2.0,
        }
    ]
    (row,) = summarize(records)
    table = results_markdown([row], records).splitlines()
    assert table[2].startswith("| t | head | accuracy | 60.0 ± 7.9 (n=5) | 90.0 | 7 |")
    assert len({line.count("|") for line in table[:3]}) == 1  # every row has the header's columns
    assert row["mean"] == pytest.approx(statistics.fmean(values))
    assert row["std"] == pytest.approx(statistics.stdev(values))
    assert row["splits"] == 5 and row["few_all"] == 0.9 and row["seconds"] == 7.0


def test_a_task_without_splits_gets_no_blank_spread_column_and_csv_carries_test_scores(tmp_path):
    import csv

    record = {
        "task": "chnsenticorp", "method": "head", "split": "full", "metric": "accuracy", "value": 0.88,
        "seconds": 3.0, "train_examples": 10, "dev_examples": 5, "test_metrics": {"accuracy": 0.87},
    }  # fmt: skip
    table = results_markdown(summarize([record]), [record]).splitlines()
    assert "mean ± std" not in table[0] and table[2].startswith("| chnsenticorp | head | accuracy | 88.0 |")
    write_results(str(tmp_path), [record])
    (row,) = csv.DictReader((tmp_path / "results.csv").open(encoding="utf-8"))
    assert float(row["value"]) == 0.88 and float(row["test_value"]) == 0.87


def test_submission_lines_follow_fewclue(tmp_path):
    s = load_split("chid", task_spec("chid"), str(DATA), "0")
    pred_dir = tmp_path / "chid/head/split_0"
    pred_dir.mkdir(parents=True)
    (pred_dir / "test_predictions.jsonl").write_text(
        "".join(json.dumps({"id": ex.id, "pred": "3"}) + "\n" for ex in s.test)
    )
    path = write_submission(str(tmp_path), s, "head")
    assert path.endswith("submission/head/chidf_predict.json")
    lines = [json.loads(x) for x in Path(path).read_text().splitlines()]
    assert lines == [{"id": ex.id, "answer": 3} for ex in s.test]


def test_per_task_overrides_apply_to_that_task_only():
    from fs_ray.config import ConfigError

    cfg = load_config(
        FinetuneConfig,
        None,
        [
            "task.names=[eprstmt, tnews]",
            "optim.epochs=10",
            "per_task={tnews: [optim.epochs=3, 'task.splits=[0]']}",
        ],
    )
    assert cfg.for_task("tnews").optim.epochs == 3 and cfg.for_task("tnews").task.splits == ["0"]
    assert cfg.for_task("eprstmt").optim.epochs == 10 and cfg.for_task("eprstmt") is cfg
    with pytest.raises(
        ConfigError, match=r"(?s)per_task\.tnews: .*optim\.epochs: Input should be greater than or equal to 0"
    ):
        load_config(FinetuneConfig, None, ["task.names=[tnews]", "per_task={tnews: [optim.epochs=-1]}"])
    with pytest.raises(ConfigError, match=r"per_task\.iflytek: not among task\.names"):
        load_config(FinetuneConfig, None, ["per_task={iflytek: [optim.epochs=3]}"])


def test_zero_shot_evaluation_needs_no_training_file(tmp_path):
    from tests.task_data import SPECS, _write_tasks

    _write_tasks(tmp_path)
    (tmp_path / "sep_single/train_0.json").unlink()
    common = [*SPECS, f"task.data_root={tmp_path}", "task.names=[sep_single]", "task.splits=[0]"]
    p = plan(load_config(FinetuneConfig, None, [*common, "methods=[unimc_zero]"]))
    split = p["splits"]["sep_single"]["0"]
    assert split.train == [] and split.labels == ["neg", "pos"] and len(split.dev) == 32
    # evaluating an export (epochs 0) reads none either; training, or the TF-IDF floor, does
    plan(load_config(FinetuneConfig, None, [*common, "methods=[head]", "optim.epochs=0"]))
    for methods in ("[head]", "[tfidf]"):
        with pytest.raises(FinetuneError, match=r"train_0\.json"):
            plan(load_config(FinetuneConfig, None, [*common, f"methods={methods}"]))


def test_epoch_batches_resume_exactly_where_the_uninterrupted_stream_is():
    """Fine-tuning's training stream (rows held by the worker, one seeded permutation per epoch):
    restarting after any number of micro-batches gives the same batches as never stopping, also
    across epoch ends and with a last short batch; every epoch covers every row once."""
    from itertools import islice

    from fs_ray.training.finetune import epoch_batches

    n, size = 11, 4  # 3 micro-batches an epoch, the last of 3 rows
    rows = {"uid": np.arange(n), "attention_mask": np.ones((n, 5), dtype=np.int64)}
    full = [b["uid"].tolist() for b in islice(epoch_batches(rows, size, seed=7, start=0), 12)]
    for epoch in range(4):
        assert sorted(u for b in full[3 * epoch : 3 * epoch + 3] for u in b) == list(range(n))
    assert full[0:3] != full[3:6]  # a new order each epoch
    for start in range(9):
        resumed = [b["uid"].tolist() for b in islice(epoch_batches(rows, size, seed=7, start=start), 3)]
        assert resumed == full[start : start + 3], start
    assert [b["uid"].tolist() for b in islice(epoch_batches(rows, size, seed=-3, start=0), 3)]  # any seed
