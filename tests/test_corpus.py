"""Corpus preparation: bad records counted by reason, exact round trip, jieba word starts, packing."""

from __future__ import annotations

import gzip
import json
import random

import jieba
import numpy as np
import pyarrow.parquet as pq
import pytest

from fs_ray.assets import DEMO_CORPUS
from fs_ray.config import ConfigError, load_config
from fs_ray.data.corpus import (
    PrepareError,
    TooManyBadRecords,
    _chunk_lines,
    bad_fraction_message,
    clean_text,
    expand_inputs,
    keep_bad_examples,
    pack_documents,
    parse_line,
    plan_chunks,
    prepare,
)
from fs_ray.data.tokenization import WordSegmenter, load_tokenizer, special_ids
from fs_ray.run_configs import CleanSection, PackSection, PrepareConfig

DEMO_LINES = DEMO_CORPUS.read_text(encoding="utf-8").split("\n")


# ---------------------------------------------------------------------------------------------
# pure functions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "fmt", "reason"),
    [
        (b'{"text": "ok"', "jsonl", "malformed_json"),
        (b'{"body": "no text field"}', "jsonl", "missing_field"),
        (b'{"text": 12}', "jsonl", "bad_field_type"),
        (b"\xff\xfe\xc3(bad utf8", "text", "invalid_utf8"),
        (b"PK\x03\x04\x00\x00binary", "text", "binary"),
        (b"\x01\x02\x03\x04\x05\x06\x07\x08abc", "jsonl", "binary"),
        (b"   ", "jsonl", "blank_line"),
    ],
)
def test_malformed_records_get_their_reason(raw, fmt, reason):
    assert parse_line(raw, fmt, "text") == (None, reason)


def test_good_records_parse_including_nested_fields():
    assert parse_line('{"meta": {"body": "中文"}}'.encode(), "jsonl", "meta.body") == ("中文", None)
    first_present = ["text", "sentence", "content"]
    assert parse_line('{"content": "甲", "sentence": "乙"}'.encode(), "jsonl", first_present) == ("乙", None)
    assert parse_line('{"title": "甲"}'.encode(), "jsonl", first_present) == (None, "missing_field")
    assert parse_line("\ufeff第一行\r".encode(), "text", "text") == ("第一行", None)
    # U+2028 is part of a record (iflytek has it), never a line break
    assert parse_line("甲\u2028乙".encode(), "text", "text") == ("甲\u2028乙", None)


def test_cleaning_normalises_and_strips_controls():
    cfg = CleanSection(normalize="NFKC")
    assert clean_text("  ＡＢＣ１２３，\u200b好\t\t的\u2028啊\x07 ", cfg) == "ABC123,好 的 啊"
    assert clean_text("ＡＢＣ", CleanSection(normalize="NFC")) == "ＡＢＣ"


def test_byte_range_chunks_cover_every_line_exactly_once(tmp_path):
    rng = random.Random(0)
    lines = ["".join(rng.choice("汉字ab\u2028 ") for _ in range(rng.randint(0, 60))) for _ in range(400)]
    path = tmp_path / "c.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    files = expand_inputs([str(path)])
    for target in (1, 7, 100, 1000, 10**6):
        got = [line.decode() for c in plan_chunks(files, target) for line in _chunk_lines(c)[0]]
        assert got == lines, f"chunk size {target}"


def test_inputs_expand_dirs_and_globs_and_fail_on_no_match(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jsonl").write_text("{}\n")
    (tmp_path / "a" / "y.txt.gz").write_bytes(gzip.compress(b"hi\n"))
    (tmp_path / "a" / "_SUCCESS").write_text("")
    got = expand_inputs([str(tmp_path / "a"), str(tmp_path / "a" / "*.jsonl")])
    assert [(f.path.rsplit("/", 1)[-1], f.format, f.compressed) for f in got] == [
        ("x.jsonl", "jsonl", False),
        ("y.txt.gz", "text", True),
    ]
    with pytest.raises(PrepareError, match=r"input\.paths: .*nothing\*\.txt.* matches no file"):
        expand_inputs([str(tmp_path / "nothing*.txt")])


def test_auto_format_refuses_an_unknown_extension_and_text_refuses_a_text_field(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "docs.csv").write_text("id,text\n1,你好\n")
    with pytest.raises(PrepareError, match=r"docs\.csv has an extension input\.format auto does not know"):
        expand_inputs([str(tmp_path / "b")])
    got = expand_inputs([str(tmp_path / "b")], "text")  # said explicitly: read as lines
    assert [f.format for f in got] == ["text"]
    with pytest.raises(ConfigError, match=r"input.*text_field: format text reads each line"):
        load_config(PrepareConfig, None, ["input.format=text", "input.text_field=content"])
    assert load_config(PrepareConfig, None, []).input.format == "auto"


def test_word_starts_follow_jieba():
    tok = load_tokenizer("bert-chinese")
    seg = WordSegmenter()
    for text in DEMO_LINES[:50]:
        text = "".join(c for c in text if "\u4e00" <= c <= "\u9fff")[:200]  # one token per character
        enc = tok.encode(text, add_special_tokens=False)
        starts = seg.token_word_starts(text, enc.offsets)
        words, current = [], ""
        for token_text, start in zip([text[a:b] for a, b in enc.offsets], starts, strict=True):
            if start and current:
                words.append(current)
                current = ""
            current += token_text
        if current:
            words.append(current)
        assert words == list(jieba.cut(text))


def test_fixed_packing_has_no_padding_and_keeps_every_token():
    ids = special_ids(load_tokenizer("bert-chinese"))
    rng = np.random.default_rng(0)
    docs = [rng.integers(1000, 2000, size=rng.integers(1, 90)).astype(np.uint16) for _ in range(40)]
    flags = [rng.random(len(d)) < 0.5 for d in docs]
    packed = pack_documents(docs, flags, PackSection(mode="fixed", seq_len=32), ids, np.dtype(np.uint16))
    lengths = [len(r) for r in packed.input_ids]
    assert all(n == 32 for n in lengths[:-1]) and 1 < lengths[-1] <= 32
    assert all(r[0] == ids.cls for r in packed.input_ids)
    stream = np.concatenate([r[1:] for r in packed.input_ids])
    assert stream.tolist() == np.concatenate([np.append(d, ids.sep) for d in docs]).tolist()
    flag_stream = np.concatenate([f[1:] for f in packed.word_starts])
    assert flag_stream.tolist() == np.concatenate([np.append(f, True) for f in flags]).tolist()


def test_document_packing_never_mixes_documents():
    ids = special_ids(load_tokenizer("bert-chinese"))
    docs = [np.arange(1000, 1000 + n, dtype=np.uint16) for n in (5, 40, 3)]
    packed = pack_documents(docs, None, PackSection(mode="document", seq_len=16), ids, np.dtype(np.uint16))
    assert [len(r) for r in packed.input_ids] == [7, 16, 16, 12, 5]
    assert packed.input_ids[0].tolist() == [ids.cls, *range(1000, 1005), ids.sep]
    assert packed.word_starts is None


def test_sentinel_vocab_is_a_config_choice():
    tok = load_tokenizer("bert-chinese-sentinels")
    ids = special_ids(tok)
    assert len(ids.sentinels) == 100
    enc = tok.encode("今天<extra_id_0>很好<extra_id_17>", add_special_tokens=False)
    assert "<extra_id_0>" in enc.tokens and "<extra_id_17>" in enc.tokens


# ---------------------------------------------------------------------------------------------
# the Ray Data pipeline
# ---------------------------------------------------------------------------------------------
GOOD = [line for line in DEMO_LINES[:300] if len(line) >= 30]


@pytest.fixture
def planted_corpus(tmp_path):
    """300ish good documents spread over txt/jsonl/gz files, with planted bad records."""
    src = tmp_path / "raw"
    src.mkdir()
    good = list(GOOD)
    (src / "a.txt").write_text(
        "\n".join(good[:100]) + "\n" + "短\n" + "\n", encoding="utf-8"
    )  # too_short, empty
    rows = [json.dumps({"text": t}, ensure_ascii=False) for t in good[100:200]]
    rows.insert(3, '{"text": "unterminated')
    rows.insert(10, json.dumps({"title": "no text"}))
    rows.insert(20, json.dumps({"text": ["not", "a", "string"]}))
    (src / "b.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with gzip.open(src / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        for t in good[200:]:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
        f.write(json.dumps({"text": good[0]}, ensure_ascii=False) + "\n")  # duplicate of a.txt line 1
    (src / "d.txt").write_bytes(
        "好的文本在这里，后面是坏字节。".encode() * 3 + b"\n\xff\xfe\xfd broken\n\x00\x01\x02junk\n"
    )
    (src / "empty.txt").write_bytes(b"")
    (src / "e.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00truncated gzip")
    cleaned = good[:100] + good[100:200] + good[200:] + ["好的文本在这里，后面是坏字节。" * 3]
    return src, [clean_text(t, CleanSection()) for t in cleaned]


def prep_cfg(src, out, *more):
    return load_config(
        PrepareConfig,
        None,
        [
            f"input.paths=[{src}]",
            f"output.dir={out}",
            "pack.seq_len=64",
            "clean.dedup=true",
            "clean.min_chars=5",
            "max_bad_fraction=0.05",
            "progress_every_s=0.5",
            *more,
        ],
    )


def read_rows(out, manifest):
    rows, flags = [], []
    for shard in manifest["shards"]:
        t = pq.read_table(out / shard["path"])
        rows += [np.asarray(r, dtype=np.int64) for r in t["input_ids"].to_pylist()]
        flags += [np.asarray(r, dtype=bool) for r in t["word_starts"].to_pylist()]
    return rows, flags


def test_prepare_counts_bad_records_and_round_trips(ray_local, planted_corpus, tmp_path, capsys):
    src, expected_docs = planted_corpus
    out = tmp_path / "prepared"
    manifest = prepare(prep_cfg(src, out))

    # every drop counted by its reason; the job finished
    assert manifest["bad"] == {
        "invalid_utf8": 1,
        "binary": 1,
        "malformed_json": 1,
        "missing_field": 1,
        "bad_field_type": 1,
    }
    assert manifest["dropped"] == {"empty": 1, "too_short": 1, "duplicate": 1}
    assert manifest["totals"]["empty_files"] == 1
    assert manifest["totals"]["unreadable_files"] == 1
    assert manifest["totals"]["documents"] == len(expected_docs)
    bad_files = {(b["file"].rsplit("/", 1)[-1], b["where"], b["reason"]) for b in manifest["first_bad"]}
    assert ("b.jsonl", "line 4", "malformed_json") in bad_files
    assert ("d.txt", "line 2", "invalid_utf8") in bad_files
    assert any(f == "e.jsonl.gz" and r.startswith("unreadable_file") for f, _, r in bad_files)

    # decode(shards) == cleaned input, in order: the token stream splits back into the documents
    tok = load_tokenizer("bert-chinese")
    ids = special_ids(tok)
    rows, flags = read_rows(out, manifest)
    # fixed packing: full 64-token rows, except one short row closing each task's batch
    assert all(len(r) <= 64 for r in rows)
    assert sum(len(r) < 64 for r in rows) <= len(manifest["shards"])
    assert all(r[0] == ids.cls for r in rows)
    stream = np.concatenate([r[1:] for r in rows])
    ends = np.flatnonzero(stream == ids.sep)
    docs = np.split(stream, ends + 1)[:-1]
    assert len(docs) == len(expected_docs)
    want = tok.encode_batch(expected_docs, add_special_tokens=False)
    for got, w, text in zip(docs, want, expected_docs, strict=True):
        assert got[:-1].tolist() == w.ids, text[:40]
    # word starts stored beside the ids are jieba's
    seg = WordSegmenter()
    flag_stream = np.concatenate([f[1:] for f in flags])
    flag_docs = np.split(flag_stream, ends + 1)[:-1]
    for f, w, text in list(zip(flag_docs, want, expected_docs, strict=True))[:20]:
        assert f[:-1].tolist() == seg.token_word_starts(text, w.offsets).tolist()

    # the manifest describes what is on disk
    assert sum(s["rows"] for s in manifest["shards"]) == manifest["totals"]["rows"] == len(rows)
    assert manifest["totals"]["tokens"] == sum(len(r) for r in rows)
    assert manifest["tokenizer"]["vocab_size"] == 21128 and manifest["dtype"] == "uint16"
    assert pq.read_schema(out / manifest["shards"][0]["path"]).field("input_ids").type.value_type == "uint16"
    assert manifest["config"]["pack"]["seq_len"] == 64
    assert (out / "config.yaml").exists() and (out / "tokenizer.json").exists()
    assert json.loads((out / "manifest.json").read_text()) == manifest
    log = capsys.readouterr().out
    assert "[prepare]" in log and "MB/s" in log and "dropped" in log


def test_one_junk_file_does_not_crowd_out_the_errors_of_another():
    junk = [{"file": "a/junk.txt", "where": f"line {i + 1}", "reason": "binary", "order": (0, i)} for i in range(500)]
    real = [{"file": "b/real.jsonl", "where": "line 7", "reason": "malformed_json", "order": (1, 6)}]
    kept = keep_bad_examples(junk + real)
    assert [b["where"] for b in kept if b["file"] == "a/junk.txt"] == ["line 1", "line 2", "line 3"]
    assert real[0] in kept
    msg = bad_fraction_message(
        {"records": 1000, "binary": 500, "malformed_json": 1},
        kept,
        0.05,
        {"a/junk.txt\tbinary": 500, "b/real.jsonl\tmalformed_json": 1},
    )
    assert "b/real.jsonl line 7: malformed_json" in msg
    assert "... 497 more binary in a/junk.txt" in msg and "more malformed_json" not in msg


def test_too_many_bad_records_stop_the_job_and_name_them(ray_local, tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in GOOD[:40]]
    for i in range(0, 40, 5):
        lines[i] = '{"text": broken'
    (src / "bad.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "prepared"
    with pytest.raises(TooManyBadRecords) as err:
        prepare(prep_cfg(src, out))
    msg = str(err.value)
    assert "8 of 40 records are malformed" in msg
    assert "bad.jsonl line 1: malformed_json" in msg and "bad.jsonl line 6: malformed_json" in msg
    assert "... 5 more malformed_json in" in msg  # three named, the rest counted
    assert not (out / "manifest.json").exists()  # training refuses a half-made corpus
    # the same data passes with a looser threshold, and a second run refuses to overwrite
    with pytest.raises(PrepareError, match="already holds files"):
        prepare(prep_cfg(src, out, "max_bad_fraction=0.5"))
    manifest = prepare(prep_cfg(src, out, "max_bad_fraction=0.5", "output.overwrite=true"))
    assert manifest["bad"] == {"malformed_json": 8}
    assert manifest["totals"]["documents"] == 32


def test_document_mode_and_no_word_boundaries(ray_local, planted_corpus, tmp_path):
    src, expected_docs = planted_corpus
    out = tmp_path / "doc"
    manifest = prepare(
        prep_cfg(src, out, "pack.mode=document", "pack.word_boundaries=false", "pack.seq_len=512")
    )
    t = pq.read_table(out / manifest["shards"][0]["path"])
    assert "word_starts" not in t.column_names
    total_rows = sum(s["rows"] for s in manifest["shards"])
    long_docs = sum(1 for d in expected_docs if len(d) > 500)
    assert len(expected_docs) <= total_rows <= len(expected_docs) + 3 * long_docs


def test_cleaning_patterns_match_the_unicode_database():
    """The spelled-out control/format classes agree with unicodedata on the whole BMP."""
    import sys
    import unicodedata

    from fs_ray.data.corpus import _TO_DROP, _TO_SPACE

    for cp in range(min(sys.maxunicode, 0xFFFF) + 1):
        c = chr(cp)
        cat = unicodedata.category(c)
        assert bool(_TO_SPACE.match(c)) == (cat in ("Cc", "Zl", "Zp")), hex(cp)
        assert bool(_TO_DROP.match(c)) == (cat == "Cf"), hex(cp)
