"""The non-neural floor every results table shows: character n-gram TF-IDF + logistic regression.

Fixed settings, never tuned on dev: characters 1-3-grams seen in at least 2 training records
(min_df=2 drops ~80% of the features and makes 100+-class tasks 5x faster to fit; dev accuracy moves
by under a point), sublinear tf, L2 logistic regression with C=10. Per shape:

- single / pair / coref: one vector per record (pair texts joined with ' ｜ ', coref with its
  spans marked as the neural models see them);
- choice: the blank filled with each candidate (a 32-character window around it), a binary
  model "is this the right filling", the highest-scoring candidate wins;
- tagging: a per-character linear tagger over the characters and bigrams in a +-2 window.
"""

from __future__ import annotations

from typing import Any

from fs_ray.data.encoding import coref_text
from fs_ray.data.tasks import Example, TaskSplit

C = 10.0
MIN_DF = 2
WINDOW = 16


def _texts(split: TaskSplit, examples: list[Example]) -> list[str]:
    if split.spec.shape == "coref":
        return [coref_text(ex) for ex in examples]
    return [" ｜ ".join(ex.texts) for ex in examples]


def _fillings(split: TaskSplit, ex: Example) -> list[str]:
    left, _, right = ex.texts[0].partition(split.spec.blank)
    return [left[-WINDOW:] + c + right[:WINDOW] for c in ex.candidates or []]


def _char_features(text: str, i: int) -> dict[str, float]:
    pad = f"^^{text}$$"
    j = i + 2
    feats = {f"c{k}={pad[j + k]}": 1.0 for k in range(-2, 3)}
    feats.update({f"b{k}={pad[j + k : j + k + 2]}": 1.0 for k in range(-2, 2)})
    return feats


def tfidf_predict(split: TaskSplit) -> dict[str, Any]:
    """Fit on ``split.train``; predicted labels for ``split.dev`` and ``split.test``."""
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    shape = split.spec.shape
    if shape == "tagging":
        vec = DictVectorizer()
        x = [_char_features(ex.texts[0], i) for ex in split.train for i in range(len(ex.texts[0]))]
        y = [t for ex in split.train for t in ex.tags or []]
        model = LogisticRegression(C=C, max_iter=2000).fit(vec.fit_transform(x), y)

        def tag(examples: list[Example]) -> list[list[str]]:
            out = []
            for ex in examples:
                feats = [_char_features(ex.texts[0], i) for i in range(len(ex.texts[0]))]
                out.append(list(model.predict(vec.transform(feats))) if feats else [])
            return out

        return {"dev": tag(split.dev), "test": tag(split.test)}

    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=MIN_DF)
    if shape == "choice":
        texts = [f for ex in split.train for f in _fillings(split, ex)]
        y = [int(k == int(ex.label)) for ex in split.train for k in range(len(ex.candidates or []))]
        model = LogisticRegression(C=C, max_iter=2000).fit(vec.fit_transform(texts), y)

        def choose(examples: list[Example]) -> list[str]:
            out = []
            for ex in examples:
                scores = model.decision_function(vec.transform(_fillings(split, ex)))
                out.append(str(int(scores.argmax())))
            return out

        return {"dev": choose(split.dev), "test": choose(split.test)}

    model = LogisticRegression(C=C, max_iter=2000)
    model.fit(vec.fit_transform(_texts(split, split.train)), [ex.label for ex in split.train])

    def classify(examples: list[Example]) -> list[str]:
        return [str(p) for p in model.predict(vec.transform(_texts(split, examples)))] if examples else []

    return {"dev": classify(split.dev), "test": classify(split.test)}
