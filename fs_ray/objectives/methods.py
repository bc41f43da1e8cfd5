"""Fine-tuning methods as objects: which task shapes each takes, how it encodes examples into
rows, the model it trains (auto class + loss wrapper), what a worker sends back per row, and
how those outputs become predictions. The worker loop, export, evaluation and serving ask the
method; none of them branches on its name.

- ``head``: a task head on the encoder (sequence, multiple-choice or token classification).
- ``unimc``: UniMC (Yang et al. 2022): every option behind its own ``[MASK]``, scored by the
  MLM logit of "是"; trained few-shot. ``unimc_zero``: the same scoring, no training.
- ``tfidf``: the char n-gram TF-IDF + logistic regression floor (no neural model).
- ``seq2seq``: generation by an encoder-decoder (T5/BART/Pegasus), teacher-forced cross-entropy
  on the target. ``clm``: generation by a decoder (Wenzhong/Yuyuan), prompt and target in one row,
  the loss on the target only. Both are evaluated by decoding (greedy, beam or sampling).
- ``lead``: the generation floor, the source's first k characters (k tuned on dev).
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
    needs_cls_sep: bool = True  # encodes [CLS] ... [SEP] rows (a BERT-style vocabulary)
    # export probe: the batch keys the model is called with to verify an export's logits
    probe_keys: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")

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

    def predict(self, work, module, inputs: dict, batch: dict) -> list:
        """(uid, payload) for each row of an evaluation batch; by default the wrapper's logits."""
        return self.payload(work.shape, batch, module.logits(**inputs).float().cpu())

    def fit_predict(self, split) -> dict:
        """A floor method (``neural`` False): fit on the split, predict dev and test."""
        raise NotImplementedError

    def decode(self, shape, labels, n_examples, outputs, rows, lengths=None):
        raise NotImplementedError


def _classifies(shape: str) -> str | None:
    if shape == "generation":
        return "a generation task needs seq2seq (T5/BART/Pegasus), clm (GPT2) or the lead floor"
    if shape == "correction":
        return (
            "a correction task needs clm (a decoder rewriting it, as Bigan does), mlm_correct (an encoder), "
            "seq2seq or a floor (copy, ngram)"
        )
    return None


class Head(Method):
    name = "head"
    summary = "fine-tune a task head (sequence, multiple-choice or token classification)"

    def check_shape(self, shape):
        return _classifies(shape)

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
        return _classifies(shape)

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

    def check_shape(self, shape):
        return _classifies(shape)

    def fit_predict(self, split):
        from fs_ray.training.baseline import tfidf_predict

        return tfidf_predict(split)


class Generation(Method):
    """Text generation fine-tuning: rows from :func:`fs_ray.data.encoding.encode_generation`, the
    model's own loss on ``labels``, evaluation by decoding (:func:`fs_ray.generation.generate_ids`)."""

    decoder = False  # one decoder row (clm) instead of an encoder input + decoder target (seq2seq)
    model_class = ""
    needs_cls_sep = False

    def check_shape(self, shape):
        if shape not in ("generation", "correction"):
            return f"{self.name} generates text; a {shape} task needs head, unimc or tfidf"
        return None

    def auto_class(self, shape):
        return self.model_class

    def encode(self, split, examples, enc, labelled, train, cfg):
        from fs_ray.data.encoding import encode_generation
        from fs_ray.data.tokenization import special_ids

        return encode_generation(
            split, examples, enc, special_ids(enc.tokenizer).as_dict(), labelled, train, self.decoder
        )

    def wrap(self, model, yes_id):
        from fs_ray.objectives.losses import ModelLoss

        return ModelLoss(model)

    def predict(self, work, module, inputs, batch):
        from fs_ray.generation import decode_text, generate_ids

        info = work.info
        ids = generate_ids(
            module.model,
            inputs["input_ids"],
            inputs["attention_mask"],
            decoder=self.decoder,
            max_new_tokens=info["max_target_len"],
            settings=info["decoding"],
            eos=info["generation_end"],
            pad=info["generation_pad"],
            synced=work.world > 1 and work.deepspeed.zero_stage == 3,
            forced_bos_token_id=None,  # targets start with their first token (a released BART may force a BOS)
        )
        tok = work.tokenizer
        texts = [decode_text(tok, seq) for seq in ids]
        if work.shape == "correction":  # as serving reads corrections (fs_ray.serving.inference.Corrector)
            from fs_ray.data.encoding import keep_unwritable, rewrite_layout, rewritten

            sources = ["".join(map(chr, row[row > 0])) for row in batch["source_chars"].cpu().numpy()]
            if self.decoder:  # a rewrite ends at its closing quote
                close = rewrite_layout(tok)[2]
                texts = [rewritten(tok, src, t, close) for src, t in zip(sources, texts, strict=True)]
            else:
                texts = [keep_unwritable(tok, src, t) for src, t in zip(sources, texts, strict=True)]
        return list(zip(batch["uid"].tolist(), texts, strict=True))

    def decode(self, shape, labels, n_examples, outputs, rows, lengths=None):
        from fs_ray.data.encoding import decode_generation

        return decode_generation(n_examples, outputs, rows)


class Seq2Seq(Generation):
    name = "seq2seq"
    summary = "generation by an encoder-decoder (T5/BART/Pegasus): teacher-forced cross-entropy on the target"
    model_class = "AutoModelForSeq2SeqLM"
    probe_keys = ("input_ids", "attention_mask", "labels")


class CausalGeneration(Generation):
    name = "clm"
    summary = "generation by a decoder (GPT2): prompt + target in one row, loss on the target only"
    decoder = True
    model_class = "AutoModelForCausalLM"
    probe_keys = ("input_ids", "attention_mask")


class Lead(Method):
    name = "lead"
    summary = "the generation floor: the source's first k characters, k tuned on dev"
    neural = False
    trains = True

    def check_shape(self, shape):
        if shape != "generation":
            return "lead is the floor of generation tasks; classification's is tfidf"
        return None

    def fit_predict(self, split):
        from fs_ray.generation import lead, lead_floor

        k, _ = lead_floor([ex.texts[0] for ex in split.dev], [ex.label or "" for ex in split.dev])
        return {
            "dev": [lead(ex.texts[0], k) for ex in split.dev],
            "test": [lead(ex.texts[0], k) for ex in split.test],
        }


class Copy(Method):
    name = "copy"
    summary = "the correction floor: the input as it is (correction F1 0; its precision shows the class balance)"
    neural = False
    trains = False

    def check_shape(self, shape):
        if shape != "correction":
            return "copy is the floor of correction tasks"
        return None

    def fit_predict(self, split):
        return {"dev": [ex.texts[0] for ex in split.dev], "test": [ex.texts[0] for ex in split.test]}


class MLMCorrector(Method):
    name = "mlm_correct"
    summary = "MLM as corrector (MacBERT4CSC-style): the MLM head predicts every character, fine-tuned on the pairs"
    probe_keys = ("input_ids", "attention_mask")

    def check_shape(self, shape):
        if shape != "correction":
            return f"{self.name} corrects text in place; a {shape} task needs another method"
        return None

    def auto_class(self, shape):
        return "AutoModelForMaskedLM"

    def encode(self, split, examples, enc, labelled, train, cfg):
        from fs_ray.data.encoding import encode_mlm_correction

        return encode_mlm_correction(split, examples, enc, labelled)

    def wrap(self, model, yes_id):
        from fs_ray.objectives.losses import CorrectorLoss

        return CorrectorLoss(model)

    def predict(self, work, module, inputs, batch):
        from fs_ray.data.encoding import corrected_text

        predicted = module.logits(**inputs).argmax(-1).cpu().numpy()
        chars = batch["chars"].cpu().numpy()
        return [
            (uid, corrected_text(work.tokenizer, chars[j], predicted[j]))
            for j, uid in enumerate(batch["uid"].tolist())
        ]

    def decode(self, shape, labels, n_examples, outputs, rows, lengths=None):
        from fs_ray.data.encoding import decode_generation

        return decode_generation(n_examples, outputs, rows)


class NgramCorrector(Method):
    name = "ngram"
    summary = "the statistical correction floor: confusion sets + a character trigram LM, threshold tuned on dev"
    neural = False
    trains = True

    def check_shape(self, shape):
        if shape != "correction":
            return "ngram is a floor of correction tasks"
        return None

    def fit_predict(self, split):
        from fs_ray.training.ngram_corrector import ngram_predict

        return ngram_predict(split)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (Head(), UniMC(), UniMCZero(), TfIdf(), Seq2Seq(), CausalGeneration(), Lead(), Copy(), NgramCorrector(), MLMCorrector())
}
