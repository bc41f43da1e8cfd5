"""Labelled tasks as data: a task is its files, its text fields, its label set and its shape.

Five shapes cover FewCLUE, CLUE-style TSV and tagging data:

- ``single``  one text -> one label (eprstmt, tnews, iflytek, csldcp, ChnSentiCorp, SMP2020-EWECT);
- ``pair``    two texts -> one label (ocnli, bustm; csl's ``abst`` + ``keyword`` list);
- ``choice``  a text with a blank + candidates -> the index of the right one (chid);
- ``coref``   a text + two spans -> do they corefer (cluewsc);
- ``tagging`` characters -> one BIO tag each (MSRA NER; scored by entity F1);
- ``generation`` a source text -> a target text (CSL titles and keywords, LCSTS summaries; scored
  by character ROUGE-L, with ROUGE-1/2 and BLEU-4 beside it);
- ``correction`` a text with spelling errors -> the corrected text (SIGHAN; scored by sentence-level
  correction F1 as pycorrector's leaderboard counts it, detection and character level beside it).

A new dataset in one of these shapes is a :class:`TaskSpec` in a config (``finetune.task_specs``),
not code. Readers never guess silently: a record with a missing field, an unknown label or a
span that is not where it says is *bad* (counted by reason, the first ones named by file, line
and field); a record with empty text is skipped and counted. Past ``max_bad_fraction`` of a
file the read fails with :class:`TaskDataError`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fs_ray import storage
from fs_ray.assets import resolve_path
from fs_ray.config import Section

FEWCLUE_SPLITS = ["0", "1", "2", "3", "4", "few_all"]
GENERATIVE_SHAPES = ("generation", "correction")  # shapes whose predictions are generated text


class TaskDataError(ValueError):
    """A task file that cannot be used as it is; the message names file, line and field."""


class TaskSpec(Section):
    """Where a task's files are and how to read them."""

    shape: Literal["single", "pair", "choice", "coref", "tagging", "generation", "correction"] = Field(
        description="Task structure."
    )
    path: str = Field(description="Task folder, relative to finetune data.root (or absolute / a URI).")
    format: Literal["jsonl", "tsv", "json"] = Field(
        "jsonl", description="JSON lines, TSV with a header row, or one JSON array of records (SIGHAN's)."
    )
    columns: list[str] | None = Field(
        None, description="TSV without a header row: the names of its columns, in order."
    )
    splits: list[str] = Field(
        default_factory=lambda: list(FEWCLUE_SPLITS),
        description="Splits run by default; {split} in the file names is replaced by each.",
    )
    train_file: str = Field("train_{split}.json", description="Training file name pattern.")
    dev_file: str = Field("dev_{split}.json", description="Evaluation file name pattern (labelled).")
    test_file: str | None = Field(
        "test.json", description="Unlabelled file to predict for submission (None: no submission)."
    )
    test_labelled: bool = Field(False, description="The test file carries labels (then it is scored too).")
    text_fields: list[str] = Field(
        description="Field(s) holding the text: one, or two for pair; list-valued fields are joined with '，'."
    )
    label_field: str = Field("label", description="Label field (choice: index of the right candidate).")
    id_fields: list[str] = Field(
        default_factory=lambda: ["id", "idx"], description="First present is the record id (else the line)."
    )
    labels: list[str] | None = Field(
        None, description="Fixed label set, in order; default: the training file's labels (sorted)."
    )
    label_file: str | None = Field(
        None, description="File in the task folder listing the labels, one per line."
    )
    verbalizer: dict[str, str] = Field(
        default_factory=dict, description="Label -> words naming it (UniMC options, display)."
    )
    label_text_field: str | None = Field(
        None, description="Field carrying each record's label name (builds the verbalizer from data)."
    )
    question: str = Field("", description="UniMC question placed before the text.")
    candidates_field: str = Field("candidates", description="choice: field with the candidate list.")
    blank: str = Field("#idiom#", description="choice: marker of the blank in the text.")
    span_field: str = Field("target", description="coref: field with span1/span2 text and index.")
    metric: Literal["accuracy", "entity_f1", "rougeL", "correct_f1"] = Field(
        "accuracy",
        description="Dev metric (generation: rougeL, the character ROUGE-L F; correction: correct_f1, "
        "the sentence-level correction F1).",
    )
    holdout: float = Field(
        0,
        ge=0,
        description="Take dev from the training file: this many records (1 or more) or this fraction "
        "(below 1), drawn with holdout_seed; dev_file is then not read. For data published as one file.",
    )
    holdout_seed: int = Field(0, description="Seed of the holdout draw (the same seed, the same split).")
    prompt: str = Field(
        "{text}",
        description="generation: the source as the model reads it; {text} is the record's text "
        "(e.g. '{text}\\n标题：' for a decoder, which continues after it).",
    )
    max_target_len: int = Field(
        64, ge=1, le=2048, description="generation: most target tokens (and new tokens generated)."
    )
    submission_file: str | None = Field(None, description="Name of the leaderboard prediction file.")
    submission_key: str = Field("label", description="Key of the prediction in submission lines.")

    @field_validator("splits", mode="before")
    @classmethod
    def _split_names_are_text(cls, v: Any) -> Any:
        return [str(x) for x in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _fields_fit_shape(self) -> TaskSpec:
        want = 2 if self.shape == "pair" else 1
        if len(self.text_fields) != want:
            raise ValueError(f"shape {self.shape} needs {want} text field(s), got {self.text_fields}")
        if self.shape == "tagging" and self.format != "tsv":
            raise ValueError("tagging tasks are read from TSV (space-separated characters and tags)")
        if self.shape == "generation":
            if "metric" not in self.model_fields_set:
                self.metric = "rougeL"
            if self.metric != "rougeL":
                raise ValueError(f"a generation task is scored by rougeL, not {self.metric}")
            if "{text}" not in self.prompt:
                raise ValueError(f"prompt {self.prompt!r} has no {{text}} for the record's text")
        elif self.metric == "rougeL":
            raise ValueError(f"rougeL scores generation tasks, not {self.shape}")
        if self.shape == "correction":
            if "metric" not in self.model_fields_set:
                self.metric = "correct_f1"
            if self.metric != "correct_f1":
                raise ValueError(f"a correction task is scored by correct_f1, not {self.metric}")
        elif self.metric == "correct_f1":
            raise ValueError(f"correct_f1 scores correction tasks, not {self.shape}")
        return self


BIO_NER = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]

TNEWS_ZH = {
    "100": "故事", "101": "文化", "102": "娱乐", "103": "体育", "104": "财经", "106": "房产", "107": "汽车",
    "108": "教育", "109": "科技", "110": "军事", "112": "旅游", "113": "国际", "114": "股票", "115": "农业",
    "116": "电竞",
}  # fmt: skip

BUILTIN_TASKS: dict[str, dict[str, Any]] = {
    "eprstmt": {
        "shape": "single", "path": "fewclue/eprstmt", "text_fields": ["sentence"],
        "labels": ["Negative", "Positive"], "verbalizer": {"Negative": "差评", "Positive": "好评"},
        "question": "这条评论的态度是？", "submission_file": "eprstmt_predict.json",
    },
    "tnews": {
        "shape": "single", "path": "fewclue/tnews", "text_fields": ["sentence"],
        "labels": list(TNEWS_ZH), "verbalizer": TNEWS_ZH, "question": "这条新闻的类别是？",
        "submission_file": "tnewsf_predict.json",
    },
    "iflytek": {
        "shape": "single", "path": "fewclue/iflytek", "text_fields": ["sentence"],
        "labels": [str(i) for i in range(119)], "label_text_field": "label_des",
        "question": "这个应用的类别是？", "submission_file": "iflytekf_predict.json",
    },
    "csldcp": {
        "shape": "single", "path": "fewclue/csldcp", "text_fields": ["content"], "label_file": "labels_all.txt",
        "question": "这篇论文摘要的学科是？", "submission_file": "csldcp_predict.json",
    },
    "ocnli": {
        "shape": "pair", "path": "fewclue/ocnli", "text_fields": ["sentence1", "sentence2"],
        "labels": ["entailment", "neutral", "contradiction"],
        "verbalizer": {"entailment": "可以推断出", "neutral": "无法判断", "contradiction": "互相矛盾"},
        "question": "两句话的关系是？", "submission_file": "ocnlif_predict.json",
    },
    "bustm": {
        "shape": "pair", "path": "fewclue/bustm", "text_fields": ["sentence1", "sentence2"],
        "labels": ["0", "1"], "verbalizer": {"0": "意思不同", "1": "意思相同"},
        "question": "两句话的意思是？", "submission_file": "bustm_predict.json",
    },
    "csl": {
        "shape": "pair", "path": "fewclue/csl", "text_fields": ["abst", "keyword"],
        "labels": ["0", "1"], "verbalizer": {"0": "不是关键词", "1": "是关键词"},
        "question": "这些词是摘要的关键词吗？", "submission_file": "cslf_predict.json",
    },
    "chid": {
        "shape": "choice", "path": "fewclue/chid", "text_fields": ["content"], "label_field": "answer",
        "question": "空白处应填的成语是？", "submission_file": "chidf_predict.json", "submission_key": "answer",
    },
    "cluewsc": {
        "shape": "coref", "path": "fewclue/cluewsc", "text_fields": ["text"], "labels": ["false", "true"],
        "verbalizer": {"false": "不是", "true": "是"}, "question": "代词指的是前面标出的人或物吗？",
        "submission_file": "cluewscf_predict.json",
    },
    "chnsenticorp": {
        "shape": "single", "path": "chnsenticorp", "format": "tsv", "text_fields": ["text_a"],
        "splits": ["full"], "train_file": "train.tsv", "dev_file": "dev.tsv", "test_file": "test.tsv",
        "test_labelled": True, "labels": ["0", "1"], "verbalizer": {"0": "差评", "1": "好评"},
        "question": "这条评论的态度是？",
    },
    "smp2020_ewect": {
        "shape": "single", "path": "smp2020_ewect", "format": "tsv", "text_fields": ["text_a"],
        "splits": ["full"], "train_file": "train.tsv", "dev_file": "dev.tsv", "test_file": "test.tsv",
        "test_labelled": True, "labels": ["0", "1", "2", "3", "4", "5"],
    },
    # CSL (ydli-ai/CSL) title and keyword generation: the 1,000 published labelled rows of each, a
    # seeded 200 held out as dev; lines are `to title|to keywords \t abstract \t target`, no header
    "csl_title": {
        "shape": "generation", "path": "csl_generation", "format": "tsv",
        "columns": ["prefix", "text", "target"], "text_fields": ["text"], "label_field": "target",
        "splits": ["full"], "train_file": "title_dev.tsv", "dev_file": "title_dev.tsv", "test_file": None,
        "holdout": 200, "prompt": "{text}\n标题：", "max_target_len": 48,
    },
    "csl_keywords": {
        "shape": "generation", "path": "csl_generation", "format": "tsv",
        "columns": ["prefix", "text", "target"], "text_fields": ["text"], "label_field": "target",
        "splits": ["full"], "train_file": "keywords_dev.tsv", "dev_file": "keywords_dev.tsv", "test_file": None,
        "holdout": 200, "prompt": "{text}\n关键词：", "max_target_len": 32,
    },
    # LCSTS as CLUEbenchmark/CLGE publishes it: `summary \t text`, no header, train/dev/test files
    "lcsts": {
        "shape": "generation", "path": "lcsts", "format": "tsv", "columns": ["summary", "text"],
        "text_fields": ["text"], "label_field": "summary", "splits": ["full"], "train_file": "train.tsv",
        "dev_file": "dev.tsv", "test_file": None, "prompt": "{text}\n摘要：", "max_target_len": 32,
    },
    # SIGHAN-2015's training set as pycorrector publishes it (a JSON array of {id, original_text,
    # wrong_ids, correct_text}); a seeded 500 held out as dev
    "sighan15": {
        "shape": "correction", "path": "sighan15", "format": "json", "text_fields": ["original_text"],
        "label_field": "correct_text", "splits": ["full"], "train_file": "train.json", "dev_file": "train.json",
        "test_file": None, "holdout": 500, "max_target_len": 160,
    },
    "msra_ner": {
        "shape": "tagging", "path": "msra_ner", "format": "tsv", "text_fields": ["text_a"],
        "splits": ["full"], "train_file": "train.tsv", "dev_file": "dev.tsv", "test_file": None,
        "labels": BIO_NER, "metric": "entity_f1",
    },
}  # fmt: skip


def task_spec(name: str, custom: dict[str, TaskSpec] | None = None) -> TaskSpec:
    if custom and name in custom:
        return custom[name]
    if name not in BUILTIN_TASKS:
        known = sorted(BUILTIN_TASKS) + sorted(custom or {})
        raise TaskDataError(f"unknown task {name!r}; known: {', '.join(known)} (or add it under task_specs)")
    return TaskSpec.model_validate(BUILTIN_TASKS[name])


@dataclass
class Example:
    """One record. ``label`` is the label string (choice: the answer index as a string)."""

    id: Any
    texts: list[str]
    label: str | None = None
    candidates: list[str] | None = None
    spans: list[tuple[int, int]] | None = None  # coref: (start, end) of span1, span2 in texts[0]
    tags: list[str] | None = None  # tagging: one per character of texts[0]
    where: str = ""


@dataclass
class ReadReport:
    path: str
    records: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count (not an error)
    bad: Counter = field(default_factory=Counter)  # reason -> count
    first_bad: list[str] = field(default_factory=list)
    label_names: dict[str, str] = field(default_factory=dict)

    def add_bad(self, reason: str, message: str) -> None:
        self.bad[reason] += 1
        if len(self.first_bad) < 5:
            self.first_bad.append(message)


class _Bad(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _get(record: dict[str, Any], key: str, where: str) -> Any:
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise _Bad("missing_field", f"{where}: field {key!r} is missing")
        value = value[part]
    return value


def _text(record: dict[str, Any], key: str, where: str) -> str:
    value = _get(record, key, where)
    if isinstance(value, list):
        value = "，".join(str(v) for v in value)
    if not isinstance(value, str):
        raise _Bad("bad_field", f"{where}: field {key!r} should be text, got {type(value).__name__}")
    return value.strip()


def _records(spec: TaskSpec, path: str):
    data = storage.read_bytes(path)
    if spec.format == "json":  # one array of records; a record's place in it is its "line"
        try:
            array = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TaskDataError(f"{path}: not a JSON array of records ({err})") from None
        if not isinstance(array, list):
            raise TaskDataError(f"{path}: format json expects an array of records, got {type(array).__name__}")
        for number, record in enumerate(array, start=1):
            where = f"{path}:record {number}"
            yield where, record if isinstance(record, dict) else _Bad("bad_json", f"{where}: not a JSON object")
        return
    # split on \n only: iflytek's texts contain U+2028, which str.splitlines() would break on
    lines = data.split(b"\n")
    header: list[str] | None = None
    for number, raw in enumerate(lines, start=1):
        where = f"{path}:{number}"
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            yield where, _Bad("bad_utf8", f"{where}: not UTF-8")
            continue
        if spec.format == "tsv":
            cells = line.split("\t")
            if header is None and spec.columns:
                header = list(spec.columns)
            elif header is None:
                header = cells
                continue
            if len(cells) != len(header):
                yield where, _Bad("bad_columns", f"{where}: {len(cells)} columns, header has {len(header)}")
                continue
            yield where, dict(zip(header, cells, strict=True))
        else:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                yield where, _Bad("bad_json", f"{where}: bad JSON ({err.msg})")
                continue
            if not isinstance(record, dict):
                yield where, _Bad("bad_json", f"{where}: a JSON object was expected")
                continue
            yield where, record


def _span(text: str, target: dict[str, Any], k: int, where: str, key: str) -> tuple[int, int]:
    try:
        s, i = str(target[f"span{k}_text"]), int(target[f"span{k}_index"])
    except (KeyError, TypeError, ValueError):
        raise _Bad("missing_field", f"{where}: field '{key}.span{k}_text/span{k}_index' is missing") from None
    if text[i : i + len(s)] != s:
        raise _Bad("bad_span", f"{where}: field '{key}.span{k}_index'={i} does not point at {s!r}")
    return i, i + len(s)


def _example(spec: TaskSpec, record: dict[str, Any], where: str, labelled: bool, number: int) -> Example:
    rid = next((record[k] for k in spec.id_fields if k in record), number)
    texts = [_text(record, f, where) for f in spec.text_fields]
    ex = Example(id=rid, texts=texts, where=where)
    if spec.shape == "tagging":
        chars = texts[0].split(" ") if texts[0] else []
        ex.texts = ["".join(chars)]
        if any(len(c) != 1 for c in chars):
            raise _Bad("bad_field", f"{where}: field {spec.text_fields[0]!r} should be single characters")
        if labelled:
            tags = _text(record, spec.label_field, where).split(" ")
            if len(tags) != len(chars):
                raise _Bad(
                    "bad_tags",
                    f"{where}: field {spec.label_field!r} has {len(tags)} tags for {len(chars)} chars",
                )
            ex.tags = tags
    elif spec.shape == "choice":
        cands = _get(record, spec.candidates_field, where)
        if not isinstance(cands, list) or len(cands) < 2:
            raise _Bad("bad_field", f"{where}: field {spec.candidates_field!r} should list 2+ candidates")
        ex.candidates = [str(c) for c in cands]
        if spec.blank not in texts[0]:
            raise _Bad("bad_field", f"{where}: field {spec.text_fields[0]!r} has no blank {spec.blank!r}")
        if labelled:
            answer = _get(record, spec.label_field, where)
            if not isinstance(answer, int) or not 0 <= answer < len(cands):
                raise _Bad(
                    "unknown_label",
                    f"{where}: field {spec.label_field!r}={answer!r} is not a candidate index",
                )
            ex.label = str(answer)
    elif spec.shape == "coref":
        target = _get(record, spec.span_field, where)
        if not isinstance(target, dict):
            raise _Bad("bad_field", f"{where}: field {spec.span_field!r} should be an object")
        raw = str(_get(record, spec.text_fields[0], where))  # indices refer to the unstripped text
        ex.texts = [raw]
        ex.spans = [_span(raw, target, k, where, spec.span_field) for k in (1, 2)]
    elif spec.shape in ("generation", "correction") and labelled:
        ex.label = _text(record, spec.label_field, where)
        if not ex.label:
            raise _Bad("empty_target", f"{where}: field {spec.label_field!r} (the target) is empty")
    if labelled and spec.shape in ("single", "pair", "coref"):
        value = _get(record, spec.label_field, where)
        if isinstance(value, bool):
            value = str(value).lower()
        ex.label = str(value)
    return ex


def read_file(
    spec: TaskSpec, path: str, labelled: bool, labels: list[str] | None, max_bad_fraction: float = 0.0
) -> tuple[list[Example], ReadReport]:
    """Read one task file. ``labels``: the allowed label set (None: accept any, e.g. for training)."""
    report = ReadReport(path=path)
    if not storage.exists(path):
        raise TaskDataError(f"{path}: no such file")
    allowed = set(labels) if labels is not None else None
    examples: list[Example] = []
    for number, (where, record) in enumerate(_records(spec, path)):
        report.records += 1
        try:
            if isinstance(record, _Bad):
                raise record
            ex = _example(spec, record, where, labelled, number)
            if not all(ex.texts):
                report.skipped["empty_text"] += 1
                continue
            known = allowed is not None and spec.shape in ("single", "pair", "coref")
            if labelled and known and ex.label not in allowed:
                shown = ", ".join(sorted(allowed)[:8]) + (" ..." if len(allowed) > 8 else "")
                raise _Bad(
                    "unknown_label",
                    f"{where}: field {spec.label_field!r}={ex.label!r} is not a known label ({shown})",
                )
            if labelled and allowed is not None and ex.tags is not None:
                unknown = sorted(set(ex.tags) - allowed)
                if unknown:
                    raise _Bad(
                        "unknown_label", f"{where}: field {spec.label_field!r} has unknown tags {unknown}"
                    )
            if spec.label_text_field and labelled and isinstance(record, dict):
                name = record.get(spec.label_text_field)
                if isinstance(name, str) and name:
                    report.label_names.setdefault(ex.label, name)
        except _Bad as bad:
            report.add_bad(bad.reason, str(bad))
            continue
        examples.append(ex)
    report.kept = len(examples)
    bad = sum(report.bad.values())
    if report.records and bad / report.records > max_bad_fraction:
        reasons = ", ".join(f"{k}: {v}" for k, v in report.bad.most_common())
        raise TaskDataError(
            f"{path}: {bad} of {report.records} records are bad ({reasons}); first: "
            + " | ".join(report.first_bad)
            + f" (allowed fraction {max_bad_fraction}; raise task.max_bad_fraction to skip them)"
        )
    return examples, report


def _natural(label: str) -> tuple[int, Any]:
    return (0, int(label)) if label.lstrip("-").isdigit() else (1, label)


@dataclass
class TaskSplit:
    """One split's data, ready for any method."""

    name: str
    spec: TaskSpec
    split: str
    labels: list[str]
    verbalizer: dict[str, str]
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    reports: list[ReadReport]


def holdout(
    examples: list[Example], size: float, seed: int, path: str
) -> tuple[list[Example], list[Example]]:
    """(rest, held out): ``size`` records (a count, or a fraction below 1) drawn with ``seed``;
    both keep the file's order."""
    import random

    n = round(size * len(examples)) if size < 1 else int(size)
    if not 0 < n < len(examples):
        raise TaskDataError(f"{path}: cannot hold out {size} of {len(examples)} records as dev")
    picked = set(random.Random(seed).sample(range(len(examples)), n))
    return (
        [ex for i, ex in enumerate(examples) if i not in picked],
        [ex for i, ex in enumerate(examples) if i in picked],
    )


def task_dir(spec: TaskSpec, root: str) -> str:
    if storage.is_uri(spec.path) or spec.path.startswith("/"):
        return spec.path
    return storage.join(resolve_path(root), spec.path)


def load_split(
    name: str,
    spec: TaskSpec,
    root: str,
    split: str,
    max_bad_fraction: float = 0.0,
    with_test: bool = True,
    need_train: bool = True,
) -> TaskSplit:
    """Read train/dev(/test) of one split and settle the label set.

    The label set is the spec's (or its label file's); otherwise the training file's, and then a
    dev label the training file never had is an error naming the dev file, line and field.
    ``need_train=False`` (zero-shot, evaluation only): a missing training file is no error, and
    without one the labels come from the dev file.
    """
    folder = task_dir(spec, root)
    fixed = spec.labels
    if fixed is None and spec.label_file:
        text = storage.read_text(storage.join(folder, spec.label_file))
        fixed = [line.strip() for line in text.split("\n") if line.strip()]
    if spec.shape == "choice":
        fixed = None
    train_path = storage.join(folder, spec.train_file.format(split=split))
    dev_path = storage.join(folder, spec.dev_file.format(split=split))
    if not need_train and not storage.exists(train_path):
        # the dev file stands in for the training file's labels (and choice count); nothing trains on it
        train_path = dev_path
    train, r_train = read_file(spec, train_path, True, fixed, max_bad_fraction)
    labels = fixed
    if labels is None and spec.shape in ("single", "pair", "coref"):
        labels = sorted({ex.label for ex in train if ex.label is not None}, key=_natural)
    if labels is None and spec.shape == "choice":
        labels = [str(i) for i in range(max(len(ex.candidates or []) for ex in train))]
    if not train:
        raise TaskDataError(f"{train_path}: no usable training records")
    if spec.holdout:
        train, dev = holdout(train, spec.holdout, spec.holdout_seed, train_path)
        r_dev = ReadReport(
            path=f"{train_path} (held out: {len(dev)} of {len(train) + len(dev)})", kept=len(dev)
        )
        if not need_train:  # evaluation only: the held-out rows are the dev set; nothing trains
            train = []
    elif train_path == dev_path:
        train, r_train.path = [], f"{r_train.path} (labels only: no training file)"
    if not spec.holdout:
        dev, r_dev = read_file(
            spec, dev_path, True, labels if spec.shape != "choice" else None, max_bad_fraction
        )
    test: list[Example] = []
    reports = [r_train, r_dev]
    if with_test and spec.test_file:
        test_path = storage.join(folder, spec.test_file.format(split=split))
        if storage.exists(test_path):
            allowed = labels if spec.test_labelled and spec.shape != "choice" else None
            test, r_test = read_file(spec, test_path, spec.test_labelled, allowed, max_bad_fraction)
            reports.append(r_test)
    verbalizer = dict(spec.verbalizer)
    for report in reports:
        for label, text in report.label_names.items():
            verbalizer.setdefault(label, text)
    for label in labels or []:
        verbalizer.setdefault(label, label)
    return TaskSplit(name, spec, split, list(labels or []), verbalizer, train, dev, test, reports)
