"""Inference on exported Hugging Face folders: what the Serve replicas run, callable directly.

Every class takes a folder written by fs_ray (pretraining export, fine-tuning export) or any
Hugging Face folder of the same architectures with a ``tokenizer.json``/``vocab.txt``, and works
on lists of inputs so a caller (``@serve.batch``) can hand it a whole batch at once.

- :class:`MaskedLM` — fill-mask, and UniMC-style zero-shot classification (the candidate labels
  rendered behind ``[MASK]``s and scored by the MLM logit of "是", exactly as fine-tuning scores them).
- :class:`TaskModel` — a fine-tuned classifier or BIO tagger (``fs_ray_task.json`` says which,
  with its labels, max_len and truncation, so serving encodes inputs as training did).
- :class:`Generator` — a causal LM (Wenzhong/Yuyuan GPT2) or seq2seq model (Randeng T5).
- :class:`Corrector` — spelling correction by an MLM-corrector export or a Bigan rewriter.
- :class:`ImageText` — a Taiyi (Chinese CLIP) export: image and text embeddings, and zero-shot
  image classification from candidate labels rendered into prompt templates.

Bad input raises :class:`InputError` naming the field; the Serve layer turns it into a 4xx.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fs_ray.data.encoding import YES, Encoder, option_groups, render_unimc
from fs_ray.data.tokenization import load_tokenizer
from fs_ray.objectives import get_method
from fs_ray.pretrained import load_model
from fs_ray.training.checkpoint import read_task_card

MASK = "[MASK]"


class InputError(ValueError):
    """A request the model cannot answer; ``field`` names the offending input."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.status = status
        self.message = message

    def __reduce__(self):  # raised in a Serve replica, it reaches the gateway whole
        return InputError, (self.field, self.message, self.status)


# one generation at a time per process: sampling seeds torch's process-wide generator, and several
# multiplexed generators may share a replica
_GENERATE_LOCK = threading.Lock()


def read_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder (no config.json)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def model_kind(folder: str) -> str:
    """``mlm``, ``classifier``, ``tagger``, ``choice``, ``clm`` or ``seq2seq``: from config.json's
    ``architectures``, else from the family owning its ``model_type`` (:mod:`fs_ray.pretrained`),
    and the fine-tuning card, which tells a UniMC-trained MLM classifier from a plain MLM."""
    from fs_ray.pretrained import ModelFolder, PretrainedError

    read_config(folder)
    card = read_task_card(folder)
    if card and get_method(str(card.get("method", "head"))).scores_options:
        return "classifier"  # an MLM trained to score options
    try:
        return ModelFolder(folder).kind
    except PretrainedError as err:
        raise ValueError(str(err)) from None


def generation_kind(folder: str) -> str | None:
    """How ``folder`` generates: ``clm`` or ``seq2seq``; a masked LM whose family also generates
    with the same weights (Zhouwenwang: the causal mode) is ``clm``; None: it does not."""
    from fs_ray.pretrained import ModelFolder

    kind = model_kind(folder)
    if kind in ("clm", "seq2seq"):
        return kind
    family = ModelFolder(folder).family
    if kind == "mlm" and family is not None and "generate" in family.operations:
        return "clm"
    return None


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


def device() -> torch.device:
    """The GPU Ray gave this replica (CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _to(batch: dict[str, torch.Tensor], dev: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(dev, non_blocking=True) for k, v in batch.items()}


def _pad_batch(seqs: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _stack_rows(rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Rows padded to max_len -> tensors trimmed to the longest real sequence."""
    mask = np.stack([r["attention_mask"] for r in rows])
    longest = int(mask.sum(axis=1).max())
    return {
        k: torch.from_numpy(np.stack([r[k] for r in rows])[:, :longest].copy())
        for k in ("input_ids", "attention_mask", "token_type_ids")
        if k in rows[0]
    }


def _softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    s = sum(e)
    return [v / s for v in e]


def _ranked(labels: list[str], probs: list[float]) -> list[tuple[str, float]]:
    return sorted(zip(labels, probs, strict=True), key=lambda p: -p[1])


@dataclass
class _Base:
    folder: str
    max_len: int = 512

    def _load_tokenizer(self) -> None:
        self.tokenizer = load_tokenizer(self.folder)
        model_max = int(self.config.get("max_position_embeddings") or self.config.get("n_positions") or 512)
        self.max_len = min(self.max_len, model_max)

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.folder))


class MaskedLM(_Base):
    """Fill-mask and UniMC zero-shot on an exported MLM (Erlangshen, Zhouwenwang-style encoders)."""

    def __init__(self, folder: str, max_len: int = 512, truncation: str = "head"):
        super().__init__(folder, max_len)
        self.config = read_config(folder)
        self._load_tokenizer()
        self.device = device()
        self.model = load_model(folder, "AutoModelForMaskedLM").eval().to(self.device)
        self.enc = Encoder(self.tokenizer, self.max_len, truncation)
        if self.enc.mask is None:
            raise ValueError(f"{folder}: the vocabulary has no {MASK}")
        special = [self.enc.pad, self.enc.cls, self.enc.sep, self.enc.mask, self.enc.unk]
        self._banned = torch.tensor([i for i in special if i is not None], dtype=torch.long)

    def encode_masked(self, text: str, field: str = "text") -> list[int]:
        pieces = text.split(MASK)
        if len(pieces) < 2:
            raise InputError(field, f"has no {MASK} to fill")
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            if i:
                ids.append(self.enc.mask)
            ids += self.enc.ids(piece)
        if len(ids) > self.max_len - 2:
            first = ids.index(self.enc.mask)
            start = max(0, min(first - (self.max_len - 2) // 2, len(ids) - (self.max_len - 2)))
            ids = ids[start : start + self.max_len - 2]  # a window around the first [MASK]
        return [self.enc.cls, *ids, self.enc.sep]

    @torch.no_grad()
    def fill_mask(self, texts: list[str], top_k: int = 5) -> list[list[list[tuple[str, float]]]]:
        """For each text, for each ``[MASK]`` left to right: the ``top_k`` (token, probability)."""
        seqs = [self.encode_masked(t, f"texts[{i}]") for i, t in enumerate(texts)]
        batch = _pad_batch(seqs, self.enc.pad)
        logits = self.model(**_to(batch, self.device)).logits.float().cpu()
        logits[..., self._banned] = float("-inf")
        probs = logits.softmax(-1)
        out = []
        for i, seq in enumerate(seqs):
            per_mask = []
            for pos in [p for p, t in enumerate(seq) if t == self.enc.mask]:
                top = probs[i, pos].topk(top_k)
                per_mask.append(
                    [
                        (self.tokenizer.id_to_token(int(t)).removeprefix("##"), float(s))
                        for s, t in zip(top.values, top.indices, strict=True)
                    ]
                )
            out.append(per_mask)
        return out

    @torch.no_grad()
    def option_scores(self, passages: list[str], options: list[str], question: str = "") -> list[float]:
        """UniMC: the MLM logit of "是" at each option's ``[MASK]``, options split over as many
        inputs as they need (as fine-tuning evaluates them)."""
        if self.enc.yes is None:
            raise ValueError(f"{self.folder}: UniMC needs '{YES}' in the vocabulary")
        option_ids = [self.enc.cut(self.enc.ids(o), self.max_len // 2 - 1) for o in options]
        question_ids = self.enc.ids(question)
        passage_ids = [self.enc.ids(p) for p in passages]
        rows, where = [], []
        for group in option_groups(option_ids, self.max_len // 2):
            row, positions = render_unimc(self.enc, option_ids, group, question_ids, passage_ids)
            rows.append(row)
            where.append(list(zip(group, positions, strict=True)))
        batch = _stack_rows(rows)
        base = getattr(self.model, self.model.base_model_prefix)
        hidden = base(**_to(batch, self.device)).last_hidden_state
        scores = [0.0] * len(options)
        for r, pairs in enumerate(where):
            picked = hidden[r, [p for _, p in pairs]]
            yes = self.model.cls(picked)[:, self.enc.yes].float().cpu()
            for (option, _), value in zip(pairs, yes.tolist(), strict=True):
                scores[option] = value
        return scores

    def zero_shot(self, text: str, labels: list[str], question: str = "") -> list[tuple[str, float]]:
        """Candidate labels ranked by probability (softmax over their UniMC scores)."""
        if len(labels) < 2:
            raise InputError("labels", "give at least two candidate labels")
        if len(set(labels)) != len(labels):
            raise InputError("labels", "candidate labels must differ")
        return _ranked(labels, _softmax(self.option_scores([text], labels, question)))


class TaskModel(_Base):
    """A fine-tuned export: sequence classifier (single/pair/coref), UniMC classifier or BIO tagger."""

    def __init__(self, folder: str, max_len: int | None = None):

        self.config = read_config(folder)
        self.card = read_task_card(folder) or {}
        super().__init__(folder, int(max_len or self.card.get("max_len") or 512))
        self.kind = model_kind(folder)
        if self.kind not in ("classifier", "tagger"):
            raise ValueError(f"{folder}: a {self.kind} model is not a fine-tuned classifier or tagger")
        self._load_tokenizer()
        self.enc = Encoder(self.tokenizer, self.max_len, self.card.get("truncation", "head"))
        self.method = self.card.get("method", "head")
        # a released classifier carries no card: whether it reads pairs is the request's to say
        self.shape = self.card.get("shape", "tagging" if self.kind == "tagger" else "any")
        id2label = self.config.get("id2label") or {}
        self.labels = list(self.card.get("labels") or [id2label[k] for k in sorted(id2label, key=int)])
        if get_method(self.method).scores_options:
            self.mlm = MaskedLM(folder, self.max_len, self.enc.truncation)
            verbalizer = self.card.get("verbalizer") or {}
            self.options = [verbalizer.get(label, label) for label in self.labels]
        else:
            auto = "AutoModelForTokenClassification" if self.kind == "tagger" else "AutoModelForSequenceClassification"
            self.device = device()
            self.model = load_model(folder, auto).eval().to(self.device)

    @property
    def task(self) -> str:
        return self.card.get("task", "")

    @torch.no_grad()
    def classify(
        self, texts: list[str], text_pairs: list[str] | None = None
    ) -> list[tuple[str, list[tuple[str, float]]]]:
        """Label and every label's probability (best first) per text."""
        if self.kind != "classifier":
            raise InputError("model", f"{self.name} is a {self.kind}; use the ner endpoint")
        pair = self.shape == "pair" or (self.shape == "any" and bool(text_pairs))
        if pair and (not text_pairs or len(text_pairs) != len(texts)):
            raise InputError("text_pairs", f"{self.name} is a sentence-pair model: give one text_pair per text")
        if not pair and text_pairs:
            raise InputError("text_pairs", f"{self.name} is a single-sentence model: drop text_pairs")
        if get_method(self.method).scores_options:
            question = self.card.get("question") or ""
            out = []
            for i, text in enumerate(texts):
                passages = [text, text_pairs[i]] if pair and text_pairs else [text]
                ranked = _ranked(self.labels, _softmax(self.mlm.option_scores(passages, self.options, question)))
                out.append((ranked[0][0], ranked))
            return out
        rows = []
        for i, text in enumerate(texts):
            a = self.enc.ids(text)
            if pair and text_pairs:
                segs = list(self.enc.fit_pair(a, self.enc.ids(text_pairs[i]), self.max_len - 3))
            else:
                segs = [self.enc.cut(a, self.max_len - 2)]
            rows.append(self.enc.pack(segs))
        probs = self.model(**_to(_stack_rows(rows), self.device)).logits.float().softmax(-1).cpu().tolist()
        return [(ranked[0][0], ranked) for ranked in (_ranked(self.labels, p) for p in probs)]

    @torch.no_grad()
    def tag(self, texts: list[str]) -> list[list[dict[str, Any]]]:
        """Entities per text as ``{type, start, end, text}`` with character offsets (end exclusive).
        One token per character, as the tagger was trained; long texts go in consecutive windows."""
        if self.kind != "tagger":
            raise InputError("model", f"{self.name} is a {self.kind}; use the classify endpoint")
        from fs_ray.data.encoding import entities

        width = self.max_len - 2
        windows, owners = [], []
        for i, text in enumerate(texts):
            for start in range(0, max(len(text), 1), width):
                chars = text[start : start + width]
                ids = [self.enc.cls] + [self.tokenizer.token_to_id(c.lower()) or self.enc.unk for c in chars]
                windows.append([*ids, self.enc.sep])
                owners.append((i, start, len(chars)))
        best = self.model(**_to(_pad_batch(windows, self.enc.pad), self.device)).logits.argmax(-1).cpu().tolist()
        tags: list[list[str]] = [[] for _ in texts]
        for (i, _start, n), row in zip(owners, best, strict=True):
            tags[i] += [self.labels[t] for t in row[1 : 1 + n]]
        return [
            [
                {"type": kind, "start": s, "end": e, "text": text[s:e]}
                for kind, s, e in sorted(entities(tag_list), key=lambda x: x[1])
            ]
            for text, tag_list in zip(texts, tags, strict=True)
        ]


class _Cancelled:
    """A stopping criterion: generation ends at the next token once ``event`` is set (a streaming
    client went away)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **_):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _TokenQueue:
    """A transformers streamer: token ids into a queue as ``generate`` produces them, ``None`` at the
    end. Its first ``put`` is the prompt (a decoder) or the decoder start (seq2seq): not new tokens."""

    def __init__(self):
        import queue

        self.queue: queue.Queue = queue.Queue()
        self._first = True

    def put(self, value) -> None:
        if self._first:
            self._first = False
            return
        for token in value.reshape(-1).tolist():
            self.queue.put(token)

    def end(self) -> None:
        self.queue.put(None)


class Generator(_Base):
    """Text generation with a causal LM (GPT2) or a seq2seq model (T5, BART, Pegasus), batched and
    seeded per request, whole or streamed token by token.

    A fine-tuned generation export (``fs_ray_task.json`` with shape ``generation``) is prompted as it
    was trained: the card's template around the text, its end and pad ids, its ``max_target_len``
    and decoding settings as defaults. Any other generator continues the prompt as given."""

    def __init__(self, folder: str, max_len: int = 1024):

        super().__init__(folder, max_len)
        self.config = read_config(folder)
        kind = generation_kind(folder)
        if kind is None:
            raise ValueError(f"{folder}: a {model_kind(folder)} model cannot generate text")
        self.kind = kind
        self._load_tokenizer()
        auto = "AutoModelForCausalLM" if self.kind == "clm" else "AutoModelForSeq2SeqLM"
        self.device = device()
        self.model = load_model(folder, auto).eval().to(self.device)
        card = read_task_card(folder) or {}
        self.card = card if card.get("shape") == "generation" else None
        if self.card:  # the ids fine-tuning used (fs_ray.data.encoding.encode_generation)
            from fs_ray.data.encoding import Encoder
            from fs_ray.data.tokenization import special_ids
            from fs_ray.families.base import doc_end

            special = special_ids(self.tokenizer).as_dict()
            self.eos = doc_end(special)
            self.pad = special["pad"] if special.get("pad") is not None else self.eos
            self.lead = [special["cls"]] if special.get("cls") is not None else []
            self.max_len = min(self.max_len, int(self.card.get("max_len") or self.max_len))
            self.enc = Encoder(self.tokenizer, self.max_len, "head")
            self.decoder_start = None
        else:
            # the model's own ids (generation_config.json, then config.json); the vocabulary only
            # where the model names none
            from fs_ray.pretrained import ModelFolder

            ids = ModelFolder(folder).generation_ids
            vocab = self.tokenizer.get_vocab()
            self.eos = ids["eos"]
            if self.eos is None:
                self.eos = next((vocab[t] for t in ("<|endoftext|>", "</s>", "[SEP]") if t in vocab), None)
            self.pad = ids["pad"]
            if self.pad is None:
                self.pad = next((vocab[t] for t in ("[PAD]", "<pad>") if t in vocab), self.eos or 0)
            self.decoder_start = ids["decoder_start"]
        self._lock = _GENERATE_LOCK

    @property
    def default_new_tokens(self) -> int | None:
        return int(self.card["max_target_len"]) if self.card else None

    def encode(self, prompt: str, max_new_tokens: int, field: str = "prompt") -> list[int]:
        if self.card:
            from fs_ray.data.encoding import prompt_ids

            room = self.max_len - len(self.lead) - 1 - (max_new_tokens if self.kind == "clm" else 0)
            ids = [*self.lead, *prompt_ids(self.enc, self.card["prompt"], prompt, room), self.eos]
        else:
            ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids
            if self.kind == "clm":
                ids = ids[-max(1, self.max_len - max_new_tokens) :]
            else:
                ids = ids[: self.max_len - 1] + ([self.eos] if self.eos is not None else [])
        if not ids or not prompt.strip():
            raise InputError(field, "no tokens in the prompt")
        return ids

    def settings(self, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, **more: Any) -> dict[str, Any]:
        """Decoding settings of a request: the card's (fine-tuned export) under the request's own;
        a temperature above 0 samples."""
        s = {**((self.card or {}).get("decoding") or {}), "seed": seed}
        if temperature > 0:
            s.update(do_sample=True, temperature=temperature, top_p=top_p)
        s.update({k: v for k, v in more.items() if v is not None})
        return s

    def _run(self, rows: list[list[int]], max_new_tokens: int, settings: dict, **extra) -> list[list[int]]:
        from fs_ray.generation import generate_ids

        settings = {**((self.card or {}).get("decoding") or {}), **settings}  # the card's under the request's
        if self.card:  # fine-tuned targets start with their first token, never a forced BOS
            extra.setdefault("forced_bos_token_id", None)
        width = max(map(len, rows))
        ids = torch.tensor([r + [self.pad] * (width - len(r)) for r in rows], dtype=torch.long, device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long, device=self.device)
        if self.kind == "seq2seq" and self.decoder_start is not None:
            extra["decoder_start_token_id"] = self.decoder_start
        return generate_ids(
            self.model, ids, mask, decoder=self.kind == "clm", max_new_tokens=max_new_tokens, settings=settings,
            eos=self.eos if self.eos is not None else -1, pad=self.pad, **extra,
        )  # fmt: skip

    def generate_batch(self, prompts: list[str], max_new_tokens: int, settings: dict[str, Any]) -> list[str]:
        """One batched decode of several prompts under the same settings."""
        from fs_ray.generation import decode_text

        names = ["prompt"] if len(prompts) == 1 else [f"prompt[{i}]" for i in range(len(prompts))]
        rows = [self.encode(p, max_new_tokens, name) for p, name in zip(prompts, names, strict=True)]
        with self._lock:
            out = self._run(rows, max_new_tokens, settings)
        return [decode_text(self.tokenizer, seq) for seq in out]

    def generate(
        self, prompt: str, max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
        **more: Any,
    ) -> str:  # fmt: skip
        return self.generate_batch([prompt], max_new_tokens, self.settings(temperature, top_p, seed, **more))[0]

    def stream(self, prompt: str, max_new_tokens: int, settings: dict[str, Any], cancelled: threading.Event):
        """Text pieces as the tokens come (greedy or sampling, one prompt: beams never stream, a
        card's ``num_beams`` included); setting ``cancelled`` stops the generation at its next token,
        and so does leaving the loop early. Yields ``(piece, tokens so far)``; an error in the
        generation is raised here, after the pieces that came before it."""
        from transformers import StoppingCriteriaList

        from fs_ray.generation import decode_text

        if int(settings.get("num_beams", 1)) > 1:
            raise InputError("num_beams", "streaming decodes token by token: num_beams must be 1")
        row = self.encode(prompt, max_new_tokens)
        streamer = _TokenQueue()
        failed: list[BaseException] = []

        def work() -> None:
            try:
                with self._lock:
                    self._run([row], max_new_tokens, {**settings, "num_beams": 1}, streamer=streamer,
                              stopping_criteria=StoppingCriteriaList([_Cancelled(cancelled)]))  # fmt: skip
            except BaseException as err:  # handed to the consumer below
                failed.append(err)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True, name="fs_ray-generate-stream")
        thread.start()
        tokens: list[int] = []
        shown = ""
        try:
            while (token := streamer.queue.get()) is not None:
                if token == self.eos:
                    continue  # generate stops here; nothing after it is text
                tokens.append(token)
                text = decode_text(self.tokenizer, tokens)
                if text.startswith(shown) and len(text) > len(shown) and not text.endswith("\ufffd"):
                    yield text[len(shown) :], len(tokens)
                    shown = text
            thread.join()
            if failed:
                raise failed[0]
            text = decode_text(self.tokenizer, tokens)
            if text != shown and text.startswith(shown):  # held back while it was not yet clean
                yield text[len(shown) :], len(tokens)
        finally:
            cancelled.set()  # the consumer left early: stop at the next token


class Corrector(_Base):
    """Chinese spelling correction: text in, corrected text and its edits out.

    Two kinds of model correct, each as it was trained:

    - an MLM-corrector export (``fs_ray_task.json``: shape ``correction``, method ``mlm_correct``):
      one row per text as fine-tuning builds it (:func:`fs_ray.data.encoding.mlm_correction_row`), the
      MLM head's best character at every Chinese position;
    - a rewriter: a Bigan export (pretrained with ``denoise``, or released), or any causal LM
      fine-tuned with ``clm`` on a correction task, prompted ``“{text}”改写后是“`` and decoded (greedy,
      or the card's decoding) to its closing quote; the source's characters are kept where the
      output differs only in what the vocabulary cannot write
      (:func:`fs_ray.data.encoding.rewritten`, as evaluation reads rewrites).

    A text longer than one model input is corrected piece by piece (whole characters, as many as
    an input holds, cut after a sentence end where there is one) and joined, so nothing is cut off;
    a text that fits is one piece, encoded exactly as evaluation encodes it. ``max_batch``: most
    pieces in one forward pass or ``generate`` call. ``model``: already loaded weights to share."""

    def __init__(self, folder: str, max_len: int = 512, model=None, max_batch: int = 64):
        from fs_ray.data.tokenization import special_ids
        from fs_ray.families.base import doc_end
        from fs_ray.pretrained import ModelFolder

        self.config = read_config(folder)
        card = read_task_card(folder) or {}
        if card and card.get("shape") != "correction":
            raise ValueError(
                f"{folder}: fine-tuned for a {card.get('shape')} task ({card.get('task')}), not for correction"
            )
        self.card = card or None
        super().__init__(folder, int((self.card or {}).get("max_len") or max_len))
        family = ModelFolder(folder).family
        if self.card and self.card.get("method") == "mlm_correct":
            self.mode, auto = "mlm", "AutoModelForMaskedLM"
        elif (self.card and generation_kind(folder) == "clm") or (
            not self.card and family is not None and "correct" in family.operations
        ):
            self.mode, auto = "rewrite", "AutoModelForCausalLM"
        elif self.card and generation_kind(folder) == "seq2seq":
            self.mode, auto = "seq2seq", "AutoModelForSeq2SeqLM"  # source -> target, as any generation task
        else:
            what = f"a {self.card.get('method')} correction export" if self.card else f"a {model_kind(folder)} model"
            raise ValueError(
                f"{folder}: {what} does not correct text (an MLM-corrector or Bigan rewriting export does)"
            )
        self.max_batch = max(1, max_batch)
        self._load_tokenizer()
        self.enc = Encoder(self.tokenizer, self.max_len, (self.card or {}).get("truncation", "head"))
        self.device = device()
        self.model = model if model is not None else load_model(folder, auto).eval().to(self.device)
        special = special_ids(self.tokenizer).as_dict()
        if self.mode == "mlm":
            self.piece = self.max_len - 2  # one token per character
            return
        self.decoding = (self.card or {}).get("decoding") or {}
        self._lock = _GENERATE_LOCK
        if self.mode == "seq2seq":  # fine-tuning's ids (encode_generation): [CLS]? prompt end
            self.eos = doc_end(special)
            self.pad = special["pad"] if special.get("pad") is not None else self.eos
            self.lead = [special["cls"]] if special.get("cls") is not None else []
            self.max_new = int(self.card["max_target_len"])
            self.piece = min(self.max_len - len(self.lead) - 1 - 8, self.max_new - 1)  # 8: the prompt
            self.close = ""
            return
        from fs_ray.data.encoding import rewrite_layout
        from fs_ray.objectives.pretraining import rewrite_ids

        self.close = rewrite_layout(self.tokenizer)[2]  # refuses a vocabulary without the prompt
        opening, middle, closing = rewrite_ids(self.tokenizer)
        # the end the model learnt: fine-tuning's document end, else the denoise objective's
        end = doc_end(special) if self.card else special.get("eos")
        self.eos = end if end is not None else doc_end(special)
        if self.eos is None:
            raise ValueError(f"{folder}: the vocabulary has no end token to stop a rewrite")
        self.pad = special["pad"] if special.get("pad") is not None else self.eos
        self.max_new = int((self.card or {}).get("max_target_len") or self.max_len // 2)
        self.fixed = len(opening) + len(middle)
        self.room = self.max_len - self.fixed - self.max_new  # as encode_generation's rewrite rows
        # a piece's tokens fit the source room and its rewrite the target (closing quote and end
        # included), as in fine-tuning; a few tokens spare for insertions where the text is cut
        self.piece = min(self.room, self.max_new - len(closing) - 1)
        if self.piece < 8:
            raise ValueError(
                f"{folder}: max_len {self.max_len} and max_target_len {self.max_new} leave {self.piece} "
                "tokens for a text to rewrite (at least 8)"
            )

    @property
    def task(self) -> str:
        return (self.card or {}).get("task", "")

    def _pieces(self, text: str) -> list[str]:
        """``text`` in pieces of at most ``self.piece`` tokens (characters for the MLM corrector),
        each cut after its last sentence end when it has one in its second half."""
        if self.mode == "mlm":
            ends = list(range(1, len(text) + 1))  # a character is a token
        else:
            from fs_ray.objectives.pretraining import continuation_ids

            encoded = self.tokenizer.encode(text, add_special_tokens=False)
            # a rewrite's source is encoded inside the prompt (continuation_ids), a seq2seq one alone
            inside = len(encoded.ids) if self.mode == "seq2seq" else len(continuation_ids(self.tokenizer, text))
            if inside <= self.piece and (self.mode == "seq2seq" or len(encoded.ids) <= self.piece - 2):
                return [text]
            # where each token ends, in characters (a byte-level BPE repeats a character's end
            # for each of its tokens)
            ends = sorted(e for _, e in encoded.offsets if e > 0) or [len(text)]
            ends[-1] = len(text)
        budget = self.piece if self.mode == "mlm" else self.piece - 2  # a SentencePiece may add a mark
        pieces, start, taken = [], 0, 0
        for end in ends:
            taken += 1
            if taken >= budget and end < len(text):
                window = text[start:end]
                cut = max((window.rfind(c) for c in "。！？!?；;"), default=-1)
                stop = start + cut + 1 if cut >= len(window) // 2 else end
                pieces.append(text[start:stop])
                taken = sum(1 for e in ends if stop < e <= end)
                start = stop
        pieces.append(text[start:])
        return [p for p in pieces if p]

    @torch.no_grad()
    def _mlm(self, texts: list[str]) -> list[str]:
        from fs_ray.data.encoding import corrected_text, mlm_correction_row

        rows = [mlm_correction_row(self.enc, t) for t in texts]
        batch = _stack_rows(rows)
        predicted = self.model(**_to(batch, self.device)).logits.argmax(-1).cpu().numpy()
        width = predicted.shape[1]  # rows trimmed to the longest text; past it there are no characters
        return [corrected_text(self.tokenizer, r["chars"][:width], p) for r, p in zip(rows, predicted, strict=True)]

    def _rewrite(self, texts: list[str]) -> list[str]:
        from fs_ray.data.encoding import keep_unwritable, prompt_ids, rewrite_source, rewritten
        from fs_ray.generation import decode_text, generate_ids

        if self.mode == "seq2seq":
            budget = self.max_len - len(self.lead) - 1
            rows = [[*self.lead, *prompt_ids(self.enc, self.card.get("prompt") or "{text}", t, budget), self.eos]
                    for t in texts]  # fmt: skip
        else:
            rows = [rewrite_source(self.enc, t, self.room) for t in texts]
        width = max(map(len, rows))
        ids = torch.tensor([r + [self.pad] * (width - len(r)) for r in rows], dtype=torch.long, device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long, device=self.device)
        with self._lock:
            out = generate_ids(
                self.model, ids, mask, decoder=self.mode == "rewrite", max_new_tokens=self.max_new,
                settings=self.decoding, eos=self.eos, pad=self.pad, forced_bos_token_id=None,
            )  # fmt: skip
        decoded = [decode_text(self.tokenizer, seq) for seq in out]
        if self.mode == "seq2seq":
            return [keep_unwritable(self.tokenizer, t, d) for t, d in zip(texts, decoded, strict=True)]
        return [rewritten(self.tokenizer, t, d, self.close) for t, d in zip(texts, decoded, strict=True)]

    def correct(self, texts: list[str]) -> list[dict[str, Any]]:
        """``{"text": corrected, "changes": [{position, original, corrected}, ...]}`` per text."""
        from fs_ray.correction import edits

        pieces = [self._pieces(t) for t in texts]
        flat = [p for ps in pieces for p in ps]
        run = self._mlm if self.mode == "mlm" else self._rewrite
        fixed = [f for i in range(0, len(flat), self.max_batch) for f in run(flat[i : i + self.max_batch])]
        out, pos = [], 0
        for text, ps in zip(texts, pieces, strict=True):
            corrected = "".join(fixed[pos : pos + len(ps)])
            pos += len(ps)
            out.append({"text": corrected, "changes": edits(text, corrected, in_place=self.mode == "mlm")})
        return out


# ---------------------------------------------------------------------------------------------
# Taiyi: image and text embeddings, zero-shot image classification
# ---------------------------------------------------------------------------------------------
IMAGE_TEXT_CARD = "fs_ray_image_text.json"  # what a Taiyi export was trained with (contrastive.py)


def read_image_text_card(folder: str) -> dict[str, Any]:
    """The export's card: ``max_text_len``, ``image_size``, and the zero-shot ``classes`` and
    ``templates`` its run scored with ({} for a released folder, which has none)."""
    path = os.path.join(folder, IMAGE_TEXT_CARD)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_templates(templates: list[str], field: str = "templates") -> None:
    for i, t in enumerate(templates):
        if "{}" not in t:
            raise InputError(f"{field}[{i}]", f"{t!r} has no {{}} for the label to go in")


class ImageText(_Base):
    """A Taiyi export (or any folder :class:`~fs_ray.models.taiyi.TaiyiModel` loads): images are
    decoded and cropped as training decoded them (:func:`fs_ray.data.images.load_image`), texts
    tokenized as training tokenized captions (``[CLS] text [SEP]``, at most ``max_text_len``).
    Embeddings are L2-normalised; classification scores are CLIP's softmax over the temperature-
    scaled cosine similarities, each label's prompts (one per template) embedded and averaged."""

    def __init__(
        self,
        folder: str,
        max_len: int | None = None,
        max_image_bytes: int = 8 * 2**20,
        max_image_pixels: int = 16 * 2**20,
        model=None,
    ):
        from fs_ray.models import register

        register()
        card = read_image_text_card(folder)
        super().__init__(folder, int(max_len or card.get("max_text_len") or 512))
        self.config = read_config(folder)
        if model is None:
            from transformers import AutoModel

            model = AutoModel.from_pretrained(folder, local_files_only=True)
        if not hasattr(model, "get_image_features") or not hasattr(model, "scale"):
            raise ValueError(f"{folder}: a {type(model).__name__}, not a Taiyi image-text pair")
        self.device = device()
        self.model = model.eval().to(self.device)
        text_config = self.model.config.text_config
        self.max_len = min(self.max_len, int(text_config.max_position_embeddings))
        self.image_size = int(self.model.config.vision_config.image_size)
        self.max_image_bytes, self.max_image_pixels = max_image_bytes, max_image_pixels
        self._class_cache: dict[tuple, torch.Tensor] = {}  # (labels, templates) -> features, newest last
        self._cache_lock = threading.Lock()  # a replica answers requests on several threads
        self.classes: list[str] = list(card.get("classes") or [])
        self.templates: list[str] = list(card.get("templates") or ["{}"])
        self.dim = int(self.model.config.projection_dim)

    def pixels(self, images: list[bytes], field: str = "image") -> np.ndarray:
        """Encoded images -> uint8 ``(n, size, size, 3)``; an image that cannot be used raises
        :class:`InputError` naming it and why (413 when it is too large)."""
        from fs_ray.data.images import BadPair, load_image

        out = []
        for i, data in enumerate(images):
            try:
                out.append(load_image(data, self.image_size, self.max_image_bytes, self.max_image_pixels))
            except BadPair as err:
                name = field if len(images) == 1 else f"{field}[{i}]"
                raise InputError(name, f"{err.reason}: {err}", 413 if err.reason == "image_too_large" else 422) from None
        return np.stack(out)

    @torch.no_grad()
    def image_features(self, pixels: np.ndarray, batch: int = 64) -> torch.Tensor:
        from fs_ray.data.images import normalize

        feats = []
        for i in range(0, len(pixels), batch):
            f = self.model.get_image_features(normalize(pixels[i : i + batch]).to(self.device))
            feats.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
        return torch.cat(feats)

    @torch.no_grad()
    def text_features(self, texts: list[str], batch: int = 64) -> torch.Tensor:
        from fs_ray.data.images import encode_captions

        feats = []
        for i in range(0, len(texts), batch):
            enc = encode_captions(texts[i : i + batch], self.folder, self.max_len)
            mask = torch.as_tensor(enc["attention_mask"]).long()
            width = int(mask.sum(1).max())
            f = self.model.get_text_features(
                torch.as_tensor(enc["input_ids"]).long()[:, :width].to(self.device), mask[:, :width].to(self.device)
            )
            feats.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
        return torch.cat(feats)

    def class_features(self, labels: list[str], templates: list[str]) -> torch.Tensor:
        """Each label rendered into every template, embedded, averaged and renormalised; the last
        few label sets are kept (a page or client asks with the same labels again and again)."""
        key = (tuple(labels), tuple(templates))
        with self._cache_lock:
            if key in self._class_cache:
                self._class_cache[key] = self._class_cache.pop(key)  # most recently used last
                return self._class_cache[key]
        prompts = [t.replace("{}", label) for label in labels for t in templates]
        mean = self.text_features(prompts).view(len(labels), len(templates), -1).mean(1)
        features = torch.nn.functional.normalize(mean, dim=-1)
        with self._cache_lock:
            self._class_cache[key] = features
            while len(self._class_cache) > 16:
                self._class_cache.pop(next(iter(self._class_cache)))
        return features

    def embed_images(self, images: list[bytes]) -> list[list[float]]:
        return self.image_features(self.pixels(images)).tolist()

    def embed_texts(self, texts: list[str]) -> list[list[float]]:
        return self.text_features(texts).tolist()

    @torch.no_grad()
    def classify(
        self, images: list[bytes], labels: list[str] | None = None, templates: list[str] | None = None
    ) -> list[tuple[str, list[tuple[str, float]]]]:
        """For each image: the best label and every label's probability, best first."""
        labels = list(labels or self.classes)
        if len(labels) < 2:
            raise InputError("labels", "give at least two candidate labels (this model has no default set)")
        templates = list(templates or self.templates)
        check_templates(templates)
        image = self.image_features(self.pixels(images))
        probs = (float(self.model.scale()) * image @ self.class_features(labels, templates).t()).softmax(-1)
        out = []
        for row in probs.tolist():
            ranked = _ranked(labels, row)
            out.append((ranked[0][0], ranked))
        return out
