"""Task examples -> fixed-shape model rows, for each method, and the metrics on the way back.

Rows are plain dicts of numpy arrays (Ray Data carries them to the Train workers); every row
carries ``row``, the index of its example, so predictions from any rank map back to records.

- ``head``: ``[CLS] a [SEP] (b [SEP])`` for single/pair; coref marks span1 with 【】 and span2
  with 《》 in the text; choice makes one such sequence per candidate, the candidate filling the
  blank, windowed around it; tagging is one token per character.
- ``unimc``: every option rendered into the input, each behind its own ``[MASK]``:
  ``[CLS] [MASK] o1 [MASK] o2 ... [SEP] question [SEP] a (b) [SEP]``. The MLM head's logit of
  "是" (yes) at an option's ``[MASK]`` is that option's score; training is cross-entropy over
  the options' scores (UniMC, Yang et al. 2022). Option sets too long for one input (iflytek's
  119 apps) are split over several inputs and their scores compared together.
- ``seq2seq`` (generation): the prompt-wrapped source, then the document end, as the encoder's
  input; the target, then the end, as ``labels`` (padding -100), its own width ``max_target_len``.
- ``clm`` (generation): one decoder row ``source-prompt [SEP] target end``, labels only on the
  target and its end; evaluation rows hold the prompt alone and the model continues it.

Long texts are cut by a stated strategy (``head``, ``tail``, or ``head_tail``: the first quarter of
the budget from the start, the rest from the end); nothing ever overflows ``max_len``.
"""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fs_ray.data.tasks import Example, TaskSplit

Truncation = Literal["head", "tail", "head_tail"]
IGNORE = -100  # label of a position the loss skips
YES = "是"
CHOICE_BLANK = "（）"


@dataclass
class Encoder:
    tokenizer: Any  # tokenizers.Tokenizer
    max_len: int
    truncation: Truncation = "head"

    def __post_init__(self) -> None:
        t = self.tokenizer
        self.cls, self.sep = t.token_to_id("[CLS]"), t.token_to_id("[SEP]")
        self.pad, self.mask, self.unk = (
            t.token_to_id("[PAD]") or 0,
            t.token_to_id("[MASK]"),
            t.token_to_id("[UNK]"),
        )
        self.yes = t.token_to_id(YES)
        self._cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tokenizer.encode(text, add_special_tokens=False).ids
        return self._cache[text]

    def cut(self, ids: list[int], budget: int) -> list[int]:
        budget = max(budget, 0)
        if len(ids) <= budget:
            return ids
        if self.truncation == "head":
            return ids[:budget]
        if self.truncation == "tail":
            return ids[len(ids) - budget :] if budget else []
        head = budget // 4
        return ids[:head] + ids[len(ids) - (budget - head) :]

    def pack(self, segments: list[list[int]]) -> dict[str, np.ndarray]:
        """``[CLS] s0 [SEP] s1 [SEP] ...`` padded to max_len; token types 0 for s0, 1 after."""
        if self.cls is None or self.sep is None:
            raise ValueError("this method needs a BERT-style vocabulary with [CLS] and [SEP]")
        ids, types = [self.cls], [0]
        for i, seg in enumerate(segments):
            ids += [*seg, self.sep]
            types += [min(i, 1)] * (len(seg) + 1)
        return self._pad(ids, types)

    def _pad(self, ids: list[int], types: list[int]) -> dict[str, np.ndarray]:
        if len(ids) > self.max_len:
            raise AssertionError(f"{len(ids)} tokens > max_len {self.max_len}")  # callers budget first
        n = self.max_len - len(ids)
        return {
            "input_ids": np.array(ids + [self.pad] * n, dtype=np.int64),
            "attention_mask": np.array([1] * len(ids) + [0] * n, dtype=np.int64),
            "token_type_ids": np.array(types + [0] * n, dtype=np.int64),
        }

    def fit_pair(self, a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
        """Longest first: the longer segment is cut until both fit in ``budget`` tokens."""
        budget = max(budget, 0)
        if len(a) + len(b) <= budget:
            return a, b
        if len(a) <= budget // 2:
            return a, self.cut(b, budget - len(a))
        if len(b) <= budget // 2:
            return self.cut(a, budget - len(b)), b
        return self.cut(a, budget - budget // 2), self.cut(b, budget // 2)


def coref_text(ex: Example) -> str:
    """cluewsc: span1 in 【】, span2 in 《》, inserted back to front so indices stay valid."""
    text = ex.texts[0]
    marks = sorted(zip(ex.spans or [], ("【】", "《》"), strict=True), key=lambda m: m[0][0], reverse=True)
    for (start, end), (left, right) in marks:
        text = text[:start] + left + text[start:end] + right + text[end:]
    return text


def _segments(split: TaskSplit, ex: Example) -> list[str]:
    if split.spec.shape == "coref":
        return [coref_text(ex)]
    return list(ex.texts)


# ---------------------------------------------------------------------------------------------
# head
# ---------------------------------------------------------------------------------------------
def encode_head(split: TaskSplit, examples: list[Example], enc: Encoder, labelled: bool) -> list[dict]:
    shape = split.spec.shape
    label_index = {label: i for i, label in enumerate(split.labels)}
    rows = []
    for row, ex in enumerate(examples):
        if shape == "tagging":
            rows.append(_tagging_row(split, ex, enc, labelled, row))
            continue
        if shape == "choice":
            item = _choice_row(split, ex, enc)
        else:
            segs = [enc.ids(s) for s in _segments(split, ex)]
            budget = enc.max_len - 1 - len(segs)
            if len(segs) == 1:
                segs = [enc.cut(segs[0], budget)]
            else:
                segs = list(enc.fit_pair(segs[0], segs[1], budget))
            item = enc.pack(segs)
        item["label"] = np.int64(label_index[ex.label] if labelled and ex.label is not None else -100)
        if shape == "choice" and labelled:
            item["label"] = np.int64(int(ex.label))
        item["row"] = np.int64(row)
        rows.append(item)
    return rows


def _choice_row(split: TaskSplit, ex: Example, enc: Encoder) -> dict[str, np.ndarray]:
    left, _, right = ex.texts[0].partition(split.spec.blank)
    left_ids, right_ids = enc.ids(left), enc.ids(right)
    per = []
    for cand in ex.candidates or []:
        c = enc.ids(cand)
        budget = max(0, enc.max_len - 3 - 2 * len(c))
        keep_left = min(len(left_ids), max(budget // 2, budget - len(right_ids)))
        keep_right = min(len(right_ids), budget - keep_left)
        window = left_ids[len(left_ids) - keep_left :] + c + right_ids[:keep_right]
        per.append(enc.pack([c, window]))
    return {k: np.stack([p[k] for p in per]) for k in per[0]}


def _tagging_row(split: TaskSplit, ex: Example, enc: Encoder, labelled: bool, row: int) -> dict:
    chars = ex.texts[0][: enc.max_len - 2]
    ids = [enc.cls] + [enc.tokenizer.token_to_id(c.lower()) or enc.unk for c in chars] + [enc.sep]
    item = enc._pad(ids, [0] * len(ids))
    labels = np.full(enc.max_len, -100, dtype=np.int64)
    if labelled and ex.tags:
        index = {t: i for i, t in enumerate(split.labels)}
        labels[1 : 1 + len(chars)] = [index[t] for t in ex.tags[: len(chars)]]
    item["labels"] = labels
    item["row"] = np.int64(row)
    return item


# ---------------------------------------------------------------------------------------------
# UniMC
# ---------------------------------------------------------------------------------------------
def options_of(split: TaskSplit, ex: Example) -> list[str]:
    if split.spec.shape == "choice":
        return list(ex.candidates or [])
    return [split.verbalizer[label] for label in split.labels]


def question_of(split: TaskSplit, ex: Example) -> str:
    q = split.spec.question
    if split.spec.shape == "coref" and ex.spans:
        text = ex.texts[0]
        (a0, a1), (b0, b1) = ex.spans
        q = (
            q.format(span1=text[a0:a1], span2=text[b0:b1])
            if "{" in q
            else f"《{text[b0:b1]}》指的是【{text[a0:a1]}】吗？"
        )
    return q


def unimc_passages(split: TaskSplit, ex: Example) -> list[str]:
    if split.spec.shape == "choice":
        return [ex.texts[0].replace(split.spec.blank, CHOICE_BLANK)]
    return _segments(split, ex)


def option_groups(option_ids: list[list[int]], budget: int) -> list[list[int]]:
    """Consecutive option indices whose ``[MASK] + tokens`` fit in ``budget`` tokens together."""
    groups: list[list[int]] = [[]]
    used = 0
    for i, ids in enumerate(option_ids):
        cost = 1 + len(ids)
        if groups[-1] and used + cost > budget:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += cost
    return groups


def render_unimc(
    enc: Encoder,
    option_ids: list[list[int]],
    group: list[int],
    question: list[int],
    passages: list[list[int]],
) -> tuple[dict[str, np.ndarray], list[int]]:
    """One UniMC input for the options in ``group``; returns the row and each option's [MASK] position."""
    head = [enc.cls]
    positions = []
    for i in group:
        positions.append(len(head))
        head += [enc.mask, *option_ids[i]]
    head.append(enc.sep)
    room = enc.max_len - len(head) - 1 - len(passages)
    question = enc.cut(question, max(0, min(len(question), room // 3)))
    room -= len(question)
    if len(passages) == 1:
        passages = [enc.cut(passages[0], room)]
    else:
        passages = list(enc.fit_pair(passages[0], passages[1], room))
    ids = head + question + [enc.sep]
    types = [0] * len(ids)
    for p in passages:
        ids += [*p, enc.sep]
        types += [1] * (len(p) + 1)
    return enc._pad(ids, types), positions


def encode_unimc(
    split: TaskSplit,
    examples: list[Example],
    enc: Encoder,
    labelled: bool,
    train: bool,
    max_options: int,
    seed: int = 0,
) -> list[dict]:
    """Training rows: one per example, the gold option plus as many others as fit (shuffled).
    Evaluation rows: every option of every example, in as many inputs as it takes."""
    if enc.mask is None or enc.yes is None:
        raise ValueError("UniMC needs [MASK] and '是' in the vocabulary")
    option_budget = enc.max_len // 2
    rng = random.Random(seed)
    rows = []
    for row, ex in enumerate(examples):
        options = options_of(split, ex)
        opt_ids = [enc.cut(enc.ids(o), option_budget - 1) for o in options]
        question = enc.ids(question_of(split, ex))
        passages = [enc.ids(p) for p in unimc_passages(split, ex)]
        gold = split.labels.index(ex.label) if labelled and split.spec.shape != "choice" else None
        if labelled and split.spec.shape == "choice":
            gold = int(ex.label)
        if train:
            others = [i for i in range(len(options)) if i != gold]
            rng.shuffle(others)
            order = [gold, *others]
            group = option_groups([opt_ids[i] for i in order], option_budget)[0][:max_options]
            chosen = [order[i] for i in group]
            rng.shuffle(chosen)
            groups = [chosen]
        else:
            groups = [
                g[i : i + max_options]
                for g in option_groups(opt_ids, option_budget)
                for i in range(0, len(g), max_options)
            ]
        for group in groups:
            item, positions = render_unimc(enc, opt_ids, group, question, passages)
            k = len(group)
            item["mask_pos"] = np.array(positions + [0] * (max_options - k), dtype=np.int64)
            item["option_ids"] = np.array(group + [-1] * (max_options - k), dtype=np.int64)
            item["label"] = np.int64(group.index(gold) if train and gold is not None else -100)
            item["row"] = np.int64(row)
            rows.append(item)
    return rows


# ---------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------
def prompt_ids(enc: Encoder, template: str, text: str, budget: int) -> list[int]:
    """``template`` with ``{text}`` filled, tokenized, the text cut (never the template) to ``budget``."""
    before, after = template.split("{text}", 1)
    head = enc.ids(before) if before else []
    tail = enc.ids(after) if after else []
    return [*head, *enc.cut(enc.ids(text), budget - len(head) - len(tail)), *tail]


def _char_id(enc: Encoder, char: str) -> int:
    """The one token a character is in this vocabulary ([UNK] when it is none or several)."""
    ids = enc.ids(char)
    return ids[0] if len(ids) == 1 else enc.unk


def mlm_correction_row(enc: Encoder, source: str, target: str | None = None) -> dict[str, np.ndarray]:
    """One MLM-corrector row: ``[CLS]`` + one token per source character (the first
    ``max_len - 2``) + ``[SEP]``; labels are the target's characters at every position (the model
    learns to copy as well as to fix), none without a target or when its length differs (this method
    rewrites in place); ``chars`` keeps each position's source character (its code point) for
    :func:`corrected_text`. Fine-tuning and serving build rows here."""
    if enc.cls is None or enc.sep is None:
        raise ValueError("the MLM corrector needs a BERT-style vocabulary with [CLS] and [SEP]")
    chars = list(source)[: enc.max_len - 2]
    ids = [enc.cls, *(_char_id(enc, c) for c in chars), enc.sep]
    labels = [IGNORE] * len(ids)
    if target is not None and len(target) == len(source):
        labels = [IGNORE, *(_char_id(enc, c) for c in target[: len(chars)]), IGNORE]
    return {
        "input_ids": _pad_to(ids, enc.max_len, enc.pad),
        "attention_mask": _pad_to([1] * len(ids), enc.max_len, 0),
        "labels": _pad_to(labels, enc.max_len, IGNORE),
        "chars": _pad_to([0, *(ord(c) for c in chars), 0], enc.max_len, 0),
    }


def encode_mlm_correction(split: TaskSplit, examples: list[Example], enc: Encoder, labelled: bool) -> list[dict]:
    """MLM-corrector rows (:func:`mlm_correction_row`), each with its example's ``row``."""
    return [
        {**mlm_correction_row(enc, ex.texts[0], (ex.label or "") if labelled else None), "row": np.int64(row)}
        for row, ex in enumerate(examples)
    ]


def _cjk(text: str) -> bool:
    return len(text) == 1 and ("\u4e00" <= text <= "\u9fff" or "\u3400" <= text <= "\u4dbf")


def corrected_text(tokenizer, chars: np.ndarray, predicted: np.ndarray) -> str:
    """The source characters with each Chinese one replaced by the Chinese character predicted at
    its position (positions 1..n; anything else, [UNK] or a word piece keeps the source)."""
    out = []
    for code, pid in zip(chars, predicted, strict=True):
        if not code:
            continue
        src = chr(int(code))
        token = tokenizer.id_to_token(int(pid)) or ""
        out.append(token if _cjk(src) and _cjk(token) else src)
    return "".join(out)


def rewrite_layout(tokenizer) -> tuple[str, str, str]:
    """Bigan's rewriting prompt as this vocabulary writes it: ``“{text}”改写后是“`` + target + ``”``
    with curly quotes where it has them, ASCII quotes otherwise (the Chinese BERT vocabulary)."""
    from fs_ray.objectives.pretraining import REWRITE, REWRITE_ASCII, rewrite_ids

    parts = rewrite_ids(tokenizer)
    if parts is None:
        raise ValueError(f"the vocabulary cannot write the rewriting prompt {''.join(REWRITE)!r}")
    return REWRITE if parts[0] == tuple(tokenizer.encode(REWRITE[0], add_special_tokens=False).ids) else REWRITE_ASCII


def rewrite_source(enc: Encoder, text: str, room: int) -> list[int]:
    """Bigan's prompt ``“{text}”改写后是“`` in ids, ``text`` cut to ``room`` tokens, as FengShen's
    one-string encoding has it (fine-tuning rows and serving alike)."""
    from fs_ray.objectives.pretraining import continuation_ids, rewrite_ids

    parts = rewrite_ids(enc.tokenizer)
    if parts is None:
        raise ValueError("the vocabulary cannot write the rewriting prompt “{text}”改写后是“")
    opening, middle, _ = parts
    return [*opening, *enc.cut(continuation_ids(enc.tokenizer, text), room), *middle]


def rewritten(tokenizer, source: str, generated: str, close: str) -> str:
    """A rewriter's correction of ``source`` from its decoded continuation ``generated``: the text
    up to the closing quote (the one before the end token; the first one when the end never came),
    then with the source's own characters kept wherever the output differs only in what the
    vocabulary cannot write (:func:`keep_unwritable`). Evaluation and serving both read rewrites here."""
    if generated.endswith(close):
        generated = generated[: -len(close)]
    elif close in generated:
        generated = generated.split(close, 1)[0]
    return keep_unwritable(tokenizer, source, generated)


def keep_unwritable(tokenizer, source: str, output: str) -> str:
    """``output`` with the source's characters restored where they differ only by the vocabulary's
    round trip: a character it lowercases (an uncased vocabulary), cannot write ([UNK], e.g. curly
    quotes in the Chinese BERT vocabulary) or drops (whitespace: the output's own is dropped). Real
    edits stay as the model made them: a character the model deleted that the vocabulary can write
    stays deleted, and one it cannot write that the model wrote something in place of is replaced."""
    from fs_ray.generation import decode_text

    cache: dict[str, str] = {}

    def trip(c: str) -> str:
        if c not in cache:
            cache[c] = decode_text(tokenizer, tokenizer.encode(c, add_special_tokens=False).ids)
        return cache[c]

    seen = [trip(c) for c in source]  # each source character as the model reads it back
    # whitespace in a decoded output is the decoder's (WordPiece spaces ASCII words apart); the
    # source's own whitespace, which no vocabulary here writes, comes back from the source
    output = "".join(c for c in output if not c.isspace())
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, seen, list(output), autojunk=False).get_opcodes():
        if op == "equal":
            out.append(source[i1:i2])
        elif op == "delete":  # the unwritable source characters come back, real deletions stay
            out.append("".join(source[i] for i in range(i1, i2) if not seen[i]))
        else:  # insert / replace: the model's own text (it wrote something where [UNK] was)
            out.append(output[j1:j2])
    return "".join(out)


def _pad_to(ids: list[int], width: int, value: int) -> np.ndarray:
    return np.array([*ids, *[value] * (width - len(ids))], dtype=np.int64)


def encode_generation(
    split: TaskSplit,
    examples: list[Example],
    enc: Encoder,
    special: dict,
    labelled: bool,
    train: bool,
    decoder: bool,
) -> list[dict]:
    """Generation rows (see the module notes); ``decoder``: one causal-LM row instead of a seq2seq pair.

    Ids come from the corpus convention in ``special``: [CLS] opens a sequence where the vocabulary
    has one, the document end ([SEP], else </s>) closes the source and the target."""
    spec = split.spec
    from fs_ray.families.base import doc_end

    end = doc_end(special)
    if end is None:
        raise ValueError("generation needs an end token ([SEP], </s> or <|endoftext|>) in the vocabulary")
    lead = [special["cls"]] if special.get("cls") is not None else []
    pad = special.get("pad") if special.get("pad") is not None else end
    tgt_len = spec.max_target_len
    rewrite = decoder and spec.shape == "correction"
    if rewrite:  # Bigan's layout, as the denoise objective pretrains it: “{text}”改写后是“{clean}” + end
        from fs_ray.objectives.pretraining import continuation_ids, rewrite_ids

        rewrite_layout(enc.tokenizer)  # refuses a vocabulary that cannot write the prompt
        opening, middle, closing = (list(p) for p in rewrite_ids(enc.tokenizer))
        room = enc.max_len - tgt_len - len(opening) - len(middle)
    elif decoder:
        room = enc.max_len - len(lead) - 1 - tgt_len  # evaluation generates into the same room
    if decoder and room < 8:
        raise ValueError(f"task.max_len {enc.max_len} leaves no room for the source after {tgt_len} target tokens")
    rows = []
    for row, ex in enumerate(examples):
        target = [*enc.ids(ex.label)[: tgt_len - 1], end] if labelled and ex.label else []
        if rewrite:  # the texts inside the prompt as its one-string encoding has them
            clean = continuation_ids(enc.tokenizer, ex.label) if labelled and ex.label else []
            target = [*clean[: tgt_len - 1 - len(closing)], *closing, end] if clean else []
            source = rewrite_source(enc, ex.texts[0], room)
        elif decoder:
            source = [*lead, *prompt_ids(enc, spec.prompt, ex.texts[0], room), end]
        if decoder:  # one causal-LM row: source, then (training) the target with the loss on it
            ids = source + (target if train else [])
            item = {
                "input_ids": _pad_to(ids, enc.max_len, pad),
                "attention_mask": _pad_to([1] * len(ids), enc.max_len, 0),
            }
            if train:
                item["labels"] = _pad_to([IGNORE] * len(source) + target, enc.max_len, IGNORE)
        else:
            source = [*lead, *prompt_ids(enc, spec.prompt, ex.texts[0], enc.max_len - len(lead) - 1), end]
            item = {
                "input_ids": _pad_to(source, enc.max_len, pad),
                "attention_mask": _pad_to([1] * len(source), enc.max_len, 0),
            }
            if train:  # its own width, never the input's: collate_rows trims it by its own rows
                item["labels"] = _pad_to(target, tgt_len + (tgt_len == enc.max_len), IGNORE)
        if spec.shape == "correction":  # what a correction keeps where the vocabulary cannot write it
            item["source_chars"] = _pad_to([ord(c) for c in ex.texts[0][: enc.max_len]], enc.max_len, 0)
        item["row"] = np.int64(row)
        rows.append(item)
    return rows


def decode_generation(
    n_examples: int, outputs: dict[int, Any], rows: list[int]
) -> tuple[list[Any], list[None]]:
    """Generated texts (``uid -> text``) -> one prediction per example."""
    preds: list[Any] = [""] * n_examples
    for uid, text in outputs.items():
        preds[rows[uid]] = text
    return preds, [None] * n_examples


# ---------------------------------------------------------------------------------------------
# batches and metrics
# ---------------------------------------------------------------------------------------------
def collate_rows(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """numpy batch -> tensors, trimmed to the longest real sequence in the batch."""
    import torch

    mask = batch["attention_mask"]
    longest = int(np.max(np.nonzero(mask.reshape(-1, mask.shape[-1]).any(axis=0))[0])) + 1
    out = {}
    for key, value in batch.items():
        arr = np.asarray(value)
        if key == "labels" and arr.ndim == 2 and arr.shape[-1] != mask.shape[-1]:
            # a seq2seq target has its own width: trimmed to its own longest row
            used = np.nonzero((arr != IGNORE).any(axis=0))[0]
            arr = arr[:, : int(used.max()) + 1 if len(used) else 1]
        elif key in ("input_ids", "attention_mask", "token_type_ids", "labels", "chars") and arr.ndim >= 2:
            arr = arr[..., :longest]
        out[key] = torch.from_numpy(np.ascontiguousarray(arr))
    return out


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """BIO tags -> {(type, start, end)}; an I- tag that does not continue an entity starts one."""
    found, kind, start = set(), None, 0
    for i, tag in enumerate([*tags, "O"]):
        inside = tag.startswith("I-") and kind == tag[2:]
        if not inside:
            if kind is not None:
                found.add((kind, start, i))
            kind, start = (tag[2:], i) if tag[:2] in ("B-", "I-") else (None, i)
    return found


def entity_f1(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred, strict=True):
        ge, pe = entities(g), entities(p)
        tp, n_gold, n_pred = tp + len(ge & pe), n_gold + len(ge), n_pred + len(pe)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_f1": f1, "entity_precision": precision, "entity_recall": recall}


def gold_of(split: TaskSplit, examples: list[Example]) -> list[Any]:
    """What a prediction is scored against: tags, the label, or (correction) [source, target]."""
    if split.spec.metric == "correct_f1":
        return [[ex.texts[0], ex.label] for ex in examples]
    return [ex.tags or [] if split.spec.metric == "entity_f1" else ex.label for ex in examples]


def score_labels(metric: str, gold: list[Any], predictions: list[Any]) -> dict[str, float]:
    """The task's metric and its companions, as fractions (a table shows them in percent)."""
    if metric == "entity_f1":
        return entity_f1(gold, predictions)
    if metric == "correct_f1":  # gold: [source, target] pairs
        from fs_ray.correction import correction_scores

        scores = correction_scores([g[0] for g in gold], [g[1] for g in gold], [p or "" for p in predictions])
        return {k: v for k, v in scores.items() if k not in ("sentences", "positives")}
    if metric == "rougeL":
        from fs_ray.generation import generation_scores

        scores = generation_scores([p or "" for p in predictions], [g or "" for g in gold])
        return {k: v / 100 for k, v in scores.items()}
    right = sum(p == g for p, g in zip(predictions, gold, strict=True))
    return {"accuracy": right / max(1, len(gold))}


def decode_options(
    shape: str, labels: list[str], n_examples: int, outputs: dict[int, Any], rows: list[int]
) -> tuple[list[Any], list[list[float] | None]]:
    """UniMC outputs (``uid -> [(option, score), ...]``; ``rows[uid]`` is the row's example) -> one
    prediction per example (its best option) plus every option's score."""
    import math

    preds: list[Any] = [None] * n_examples
    scores: list[Any] = [None] * n_examples
    per: list[dict[int, float]] = [{} for _ in range(n_examples)]
    for uid, payload in outputs.items():
        per[rows[uid]].update({int(k): float(v) for k, v in payload})
    for i, options in enumerate(per):
        n = max(options) + 1 if options else 0
        vec = [options.get(k, -math.inf) for k in range(n)]
        best = max(range(n), key=vec.__getitem__) if n else 0
        preds[i] = str(best) if shape == "choice" else labels[best]
        scores[i] = vec
    return preds, scores


def decode_labels(
    shape: str,
    labels: list[str],
    n_examples: int,
    outputs: dict[int, Any],
    rows: list[int],
    lengths: list[int] | None = None,
) -> tuple[list[Any], list[list[float] | None]]:
    """Head outputs (label logits per row, or tag ids for tagging) -> one prediction per example,
    plus the label scores behind it (None for tagging)."""
    preds: list[Any] = [None] * n_examples
    scores: list[Any] = [None] * n_examples
    for uid, payload in outputs.items():
        i = rows[uid]
        if shape == "tagging":
            tags = [labels[t] for t in payload]
            preds[i] = tags + ["O"] * max(0, (lengths or [0] * n_examples)[i] - len(tags))
            continue
        best = max(range(len(payload)), key=payload.__getitem__)
        preds[i] = str(best) if shape == "choice" else labels[best]
        scores[i] = list(payload)
    return preds, scores
