"""Fine-tuning methods as objects: which task shapes each takes, how it encodes examples into
rows, the model it trains (auto class + loss wrapper), what a worker sends back per row, and
how those outputs become predictions. The worker loop, export, evaluation and serving ask the
method; none of them branches on its name.

- ``head``: a task head on the encoder (sequence, multiple-choice or token classification).
- ``unimc``: UniMC (Yang et al. 2022): every option behind its own ``[MASK]``, scored by the
  MLM logit of "是"; trained few-shot. ``unimc_zero``: the same scoring, no training.
- ``tfidf``: the char n-gram TF-IDF + logistic regression floor (no neural model).
"""

from __future__ import annotations

from typing import Any

HEAD_CLASSES = {
    "single": "AutoModelForSequenceClassification",
    "pair": "AutoModelForSequenceClassification",
    "coref": "AutoModelForSequenceClassification",
    "choice": "AutoModelForMultipleChoice",
    "tagging": "AutoModelForTokenClassification",
}


class Method:
    name: str
    summary: str
    neural: bool = True  # trains or scores a model on the workers (False: runs as a CPU Ray task)
    trains: bool = True  # False: scores with the starting weights (zero-shot)
    scores_options: bool = False  # outputs are (option, score) pairs read from an MLM, not label logits
    evaluate_as: str = ""  # method that evaluates an export trained with this one (default: itself)

    def check_shape(self, shape: str) -> str | None:
        return None

    def auto_class(self, shape: str) -> str:
        raise NotImplementedError

    def head_kwargs(self, shape: str, labels: list[str]) -> dict[str, Any]:
        return {}

    def encode(self, split, examples, enc, labelled: bool, train: bool, cfg) -> list[dict]:
        raise NotImplementedError

    def wrap(self, model, yes_id: int | None):
        raise NotImplementedError

    def payload(self, shape: str, batch: dict, out) -> list:
        raise NotImplementedError

    def decode(self, shape, labels, n_examples, outputs, rows, lengths=None):
        raise NotImplementedError


class Head(Method):
    name = "head"
    summary = "fine-tune a task head (sequence, multiple-choice or token classification)"

    def auto_class(self, shape):
        return HEAD_CLASSES[shape]

    def head_kwargs(self, shape, labels):
        if shape == "choice":
            return {}
        return {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }

    def encode(self, split, examples, enc, labelled, train, cfg):
        from fs_ray.data.encoding import encode_head

        return encode_head(split, examples, enc, labelled)

    def wrap(self, model, yes_id):
        from fs_ray.objectives.losses import HeadLoss

        return HeadLoss(model)

    def payload(self, shape, batch, out):
        res = []
        for j, uid in enumerate(batch["uid"].tolist()):
            if shape == "tagging":
                n = int(batch["attention_mask"][j].sum()) - 2
                res.append((uid, out[j, 1 : 1 + n].argmax(-1).tolist()))
            else:
                res.append((uid, out[j].tolist()))
        return res

    def decode(self, shape, labels, n_examples, outputs, rows, lengths=None):
        from fs_ray.data.encoding import decode_labels

        return decode_labels(shape, labels, n_examples, outputs, rows, lengths)


class UniMC(Method):
    name = "unimc"
    summary = "UniMC multiple choice through the MLM head, trained few-shot"
    scores_options = True
    evaluate_as = "unimc_zero"

    def check_shape(self, shape):
        if shape == "tagging":
            return "UniMC scores options; a tagging task needs head or tfidf"
        return None

    def auto_class(self, shape):
        return "AutoModelForMaskedLM"

    def encode(self, split, examples, enc, labelled, train, cfg):
        from fs_ray.data.encoding import encode_unimc

        return encode_unimc(split, examples, enc, labelled, train, cfg.task.unimc_max_options, cfg.run.seed)

    def wrap(self, model, yes_id):
        from fs_ray.objectives.losses import UniMCLoss

        return UniMCLoss(model, yes_id)

    def payload(self, shape, batch, out):
        res = []
        for j, uid in enumerate(batch["uid"].tolist()):
            opts = batch["option_ids"][j].tolist()
            res.append((uid, [(o, float(s)) for o, s in zip(opts, out[j].tolist(), strict=True) if o >= 0]))
        return res

    def decode(self, shape, labels, n_examples, outputs, rows, lengths=None):
        from fs_ray.data.encoding import decode_options

        return decode_options(shape, labels, n_examples, outputs, rows)


class UniMCZero(UniMC):
    name = "unimc_zero"
    summary = "UniMC zero-shot: the starting MLM scores the options, no training"
    trains = False


class TfIdf(Method):
    name = "tfidf"
    summary = "char n-gram TF-IDF + logistic regression: the floor every table is read against"
    neural = False
    trains = True


METHODS: dict[str, Method] = {m.name: m for m in (Head(), UniMC(), UniMCZero(), TfIdf())}
