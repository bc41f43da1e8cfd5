"""Correction tasks without a cluster: SIGHAN's JSON-array format read into (source, target)
examples, the seeded holdout, the copy floor scored by the correction metrics, and the refusals
(fast tier). tests/data/sighan15/train.json holds 40 real rows of pycorrector's SIGHAN-2015
training set (Apache-2.0), 4 of them without an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fs_ray.data.encoding import gold_of, score_labels
from fs_ray.data.tasks import TaskDataError, TaskSpec, load_split, read_file, task_spec
from fs_ray.objectives import get_method

TESTDATA = Path(__file__).resolve().parent / "data"


def sighan(**more) -> TaskSpec:
    return task_spec("sighan15").model_copy(update={"holdout": 10, **more})


def test_sighan_json_reads_into_sources_and_targets_with_a_seeded_holdout():
    spec = sighan()
    assert (spec.shape, spec.format, spec.metric) == ("correction", "json", "correct_f1")
    split = load_split("sighan15", spec, str(TESTDATA), "full")
    assert (len(split.train), len(split.dev)) == (30, 10)
    assert not {ex.where for ex in split.dev} & {ex.where for ex in split.train}
    rows = json.loads((TESTDATA / "sighan15" / "train.json").read_text(encoding="utf-8"))
    first = next(ex for ex in split.train + split.dev if ex.where.endswith("record 1"))
    assert (first.texts[0], first.label) == (rows[0]["original_text"], rows[0]["correct_text"])
    again = load_split("sighan15", spec, str(TESTDATA), "full")
    assert [ex.where for ex in again.dev] == [ex.where for ex in split.dev]


def test_the_copy_floor_scores_zero_correction_and_its_accuracy_is_the_clean_share():
    spec = sighan(holdout=40 - 1)  # nearly everything as dev
    split = load_split("sighan15", spec, str(TESTDATA), "full")
    copy = get_method("copy")
    assert copy.check_shape("correction") is None and not copy.neural
    preds = copy.fit_predict(split)["dev"]
    gold = gold_of(split, split.dev)
    scores = score_labels("correct_f1", gold, preds)
    clean = sum(src == tgt for src, tgt in gold)
    assert scores["correct_f1"] == scores["detect_f1"] == 0.0
    assert scores["sentence_accuracy"] == pytest.approx(clean / len(gold)) and clean >= 3
    perfect = score_labels("correct_f1", gold, [tgt for _, tgt in gold])
    assert perfect["correct_f1"] == perfect["char_correct_f1"] == 1.0


def test_correction_refusals_name_what_fits(tmp_path):
    assert "a correction task needs clm (a decoder rewriting it, as Bigan does)" in get_method(
        "head"
    ).check_shape("correction")
    assert "seq2seq or a floor (copy, ngram)" in get_method("tfidf").check_shape("correction")
    assert get_method("copy").check_shape("generation") == "copy is the floor of correction tasks"
    with pytest.raises(ValueError, match="a correction task is scored by correct_f1, not accuracy"):
        TaskSpec.model_validate({**task_spec("sighan15").model_dump(), "metric": "accuracy"})
    with pytest.raises(ValueError, match="correct_f1 scores correction tasks, not single"):
        TaskSpec.model_validate(
            {"shape": "single", "path": "x", "text_fields": ["t"], "metric": "correct_f1"}
        )
    bad = tmp_path / "bad.json"
    bad.write_text('{"original_text": "x"}', encoding="utf-8")
    with pytest.raises(TaskDataError, match="format json expects an array of records, got dict"):
        read_file(sighan(), str(bad), True, None)
    mixed = tmp_path / "mixed.json"
    mixed.write_text(
        json.dumps([{"original_text": "他门在哪", "correct_text": "他们在哪"}, 7, {"original_text": "抱见"}]),
        encoding="utf-8",
    )
    examples, report = read_file(sighan(), str(mixed), True, None, max_bad_fraction=0.9)
    assert len(examples) == 1 and report.bad == {"bad_json": 1, "missing_field": 1}


def test_clm_rows_are_bigans_rewrite_layout_and_decoding_stops_at_the_closing_quote():
    from fs_ray.data.encoding import IGNORE, Encoder, encode_generation, rewrite_layout
    from fs_ray.data.tokenization import load_tokenizer, special_ids

    tok = load_tokenizer("bert-chinese")
    assert rewrite_layout(tok) == ('"', '"改写后是"', '"')  # no curly quotes in the BERT vocabulary
    split = load_split("sighan15", sighan(max_target_len=64), str(TESTDATA), "full")
    enc = Encoder(tok, 160, "head")
    special = special_ids(tok).as_dict()
    ex = split.train[0]
    (row,) = encode_generation(split, [ex], enc, special, True, True, decoder=True)
    n = int(row["attention_mask"].sum())
    text = tok.decode(row["input_ids"][:n].tolist()).replace(" ", "")
    assert text == f'"{ex.texts[0]}"改写后是"{ex.label}"'.replace(" ", "")  # (decode drops [SEP])
    assert row["input_ids"][n - 1] == special["sep"]
    target = [i for i in row["labels"][:n].tolist() if i != IGNORE]
    assert tok.decode(target).replace(" ", "") == f'{ex.label}"' and target[-1] == special["sep"]
    assert (row["labels"][:n] == IGNORE).sum() == n - len(target)  # no loss on the prompt or the source
    assert get_method("clm").check_shape("correction") is None


def test_the_ngram_floor_fixes_what_its_language_model_knows_and_leaves_the_rest():
    from fs_ray.training.ngram_corrector import CharTrigramLM, confusions, correct, ngram_predict

    table = confusions()
    assert "啊" in table["阿"] and "阿" in table["啊"]
    lm = CharTrigramLM(["我有一点事情啊！", "今天天气很好。"] * 20)
    assert correct("我有一点事情阿！", lm, table, 1.0) == "我有一点事情啊！"
    assert correct("今天天气很好。", lm, table, 1.0) == "今天天气很好。"
    assert correct("我有一点事情阿！", lm, table, 1e9) == "我有一点事情阿！"  # nothing beats that threshold
    split = load_split("sighan15", sighan(), str(TESTDATA), "full")
    out = ngram_predict(split, corpus_lines=200)
    from fs_ray.training.ngram_corrector import THRESHOLDS

    assert len(out["dev"]) == len(split.dev) and out["test"] == [] and out["threshold"] in THRESHOLDS
    assert get_method("ngram").check_shape("correction") is None and not get_method("ngram").neural


def test_mlm_corrector_rows_train_on_every_character_and_decode_in_place():
    from types import SimpleNamespace

    import numpy as np
    import torch

    from fs_ray.data.encoding import IGNORE, Encoder, collate_rows, corrected_text
    from fs_ray.data.tokenization import load_tokenizer
    from fs_ray.families import get_family

    tok = load_tokenizer("bert-chinese")
    split = load_split("sighan15", sighan(), str(TESTDATA), "full")
    method = get_method("mlm_correct")
    enc = Encoder(tok, 64, "head")
    rows = method.encode(split, split.train[:4], enc, True, True, None)
    ex, row = split.train[0], rows[0]
    n = len(ex.texts[0])
    assert row["input_ids"][0] == tok.token_to_id("[CLS]") and row["input_ids"][n + 1] == tok.token_to_id(
        "[SEP]"
    )
    assert [chr(c) for c in row["chars"][1 : n + 1]] == list(ex.texts[0])
    labelled = row["labels"][1 : n + 1]
    assert (labelled != IGNORE).all() and row["labels"][0] == IGNORE
    assert tok.decode(labelled.tolist()).replace(" ", "") == ex.label.lower()
    # in place: Chinese characters take the prediction, anything else keeps the source
    chars = np.array([0, *map(ord, "他门ok"), 0])
    pred = np.array(
        [0, tok.token_to_id("他"), tok.token_to_id("们"), tok.token_to_id("好"), tok.token_to_id("的"), 0]
    )
    assert corrected_text(tok, chars, pred) == "他们ok"
    # one training step and one prediction through the method's own wrapper
    family = get_family("erlangshen")
    model = family.build("AutoModelForMaskedLM", family.config("tiny", tok.get_vocab_size(), 64, {}))
    batch = collate_rows(
        {k: np.stack([r[k] for r in rows]) for k in rows[0] if k != "row"} | {"uid": np.arange(4)}
    )
    module = method.wrap(model, None)
    inputs = {k: v for k, v in batch.items() if k != "uid"}
    loss = module(**inputs)
    loss.backward()
    assert torch.isfinite(loss) and 0.5 * np.log(tok.get_vocab_size()) < float(loss) < 3 * np.log(
        tok.get_vocab_size()
    )
    out = method.predict(SimpleNamespace(tokenizer=tok), module, inputs, batch)
    assert [uid for uid, _ in out] == [0, 1, 2, 3]
    assert [len(text) for _, text in out] == [len(e.texts[0]) for e in split.train[:4]]


def test_a_rewrite_keeps_what_the_vocabulary_cannot_write_and_ends_at_its_closing_quote():
    from fs_ray.data.encoding import keep_unwritable, rewritten
    from fs_ray.data.tokenization import load_tokenizer

    tok = load_tokenizer("bert-chinese")  # uncased, no curly quotes, whitespace dropped
    source = "他说“Hello World”，他的成积很好 啊"
    decoded = "他说hello world，他的成绩很好啊"  # what the model's tokens decode to
    assert keep_unwritable(tok, source, decoded) == "他说“Hello World”，他的成绩很好 啊"
    # real edits stay: a deleted character the vocabulary writes, an inserted one, and a character
    # it cannot write ([UNK]: 篹) that the model replaced
    assert keep_unwritable(tok, "我们们去公园", "我们去公园了") == "我们去公园了"
    assert keep_unwritable(tok, "我们打篹去看他", "我们打算去看他") == "我们打算去看他"
    # the closing quote before the end token ends the rewrite; without an end, the first one does
    assert rewritten(tok, "成积很好", '成绩很好"', '"') == "成绩很好"
    assert rewritten(tok, "成积很好", '成绩"很好"', '"') == '成绩"很好'
    assert rewritten(tok, "成积很好", '成绩"很', '"') == "成绩"


def test_the_corrector_splits_long_texts_into_whole_pieces_that_fit_the_model(tmp_path):
    from fs_ray.serving.inference import Corrector
    from tests.model_folders import corrector_folder

    mlm = Corrector(str(corrector_folder(tmp_path / "fix", "mlm_correct", max_len=16)))
    text = "我们今天去公园完。天气很好，我们都很高兴啊啊啊。然后回家了！"
    pieces = mlm._pieces(text)
    assert "".join(pieces) == text and all(len(p) <= 14 for p in pieces)
    assert pieces[0] == "我们今天去公园完。"  # cut after a sentence end when one is in the second half
    (out,) = mlm.correct([text])
    assert len(out["text"]) == len(text)  # in place, every character back
    rewriter = Corrector(str(corrector_folder(tmp_path / "rw", "clm", max_len=48)))
    assert rewriter._pieces("短句子") == ["短句子"]  # a text that fits is one piece, encoded as evaluation does
    long = "Hello 我们今天去公园玩，天气很好。" * 4
    pieces = rewriter._pieces(long)
    assert "".join(pieces) == long and len(pieces) > 1
    assert all(len(tok) <= rewriter.piece for tok in (rewriter.tokenizer.encode(p).ids for p in pieces))
    assert rewriter.correct([]) == []
    with pytest.raises(ValueError, match="not for correction"):
        from tests.model_folders import generation_folder

        Corrector(str(generation_folder(tmp_path / "title")))
