"""The statistical correction floor: confusion sets + a character trigram language model.

The classic pre-neural corrector (pycorrector's KenLM one works this way): every character that
has same-sound or similar-shape confusions is tried against each of them, left to right, and the
candidate replaces it when the language model scores the three trigrams around it higher by more
than a threshold. The model is an interpolated trigram over characters (fixed weights 0.6 / 0.3 /
0.09 / 0.01 for tri-, bi-, unigram and uniform), trained on the task's clean training targets
and the shipped CLUECorpusSmall sample; the threshold is the one of a fixed grid with the best
correction F1 on dev (the only thing tuned, as a floor should be).
"""

from __future__ import annotations

import math
from collections import Counter

from fs_ray.assets import DEMO_CORPUS
from fs_ray.correction import correction_scores
from fs_ray.data.tasks import TaskSplit
from fs_ray.objectives.noise import CONFUSION_DIR, read_same_pinyin, read_same_stroke

WEIGHTS = (0.6, 0.3, 0.09, 0.01)  # trigram, bigram, unigram, uniform
THRESHOLDS = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)  # log-probability gains a change must beat
BOS, EOS = "\x02", "\x03"


class CharTrigramLM:
    def __init__(self, texts: list[str]):
        self.uni, self.bi, self.tri = Counter(), Counter(), Counter()
        self.ctx1, self.ctx2 = Counter(), Counter()
        for text in texts:
            s = BOS + BOS + text + EOS
            self.uni.update(s[2:])
            for i in range(2, len(s)):
                self.bi[s[i - 1 : i + 1]] += 1
                self.ctx1[s[i - 1]] += 1
                self.tri[s[i - 2 : i + 1]] += 1
                self.ctx2[s[i - 2 : i]] += 1
        self.total = sum(self.uni.values())
        self.vocab = len(self.uni) + 1

    def logp(self, a: str, b: str, c: str) -> float:
        w3, w2, w1, w0 = WEIGHTS
        p = w0 / self.vocab + w1 * self.uni[c] / self.total
        if self.ctx1[b]:
            p += w2 * self.bi[b + c] / self.ctx1[b]
        if self.ctx2[a + b]:
            p += w3 * self.tri[a + b + c] / self.ctx2[a + b]
        return math.log(p)

    def around(self, s: str, i: int) -> float:
        """Log-probability of the trigrams that contain position ``i`` of the padded text ``s``."""
        return sum(self.logp(s[j - 2], s[j - 1], s[j]) for j in range(i, min(i + 3, len(s))))


def confusions() -> dict[str, list[str]]:
    sound = read_same_pinyin(CONFUSION_DIR / "same_pinyin.txt")
    shape = read_same_stroke(CONFUSION_DIR / "same_stroke.txt")
    return {c: list(dict.fromkeys(sound.get(c, []) + shape.get(c, []))) for c in set(sound) | set(shape)}


def correct(text: str, lm: CharTrigramLM, table: dict[str, list[str]], threshold: float) -> str:
    s = list(BOS + BOS + text + EOS)
    for i in range(2, len(s) - 1):
        options = table.get(s[i])
        if not options:
            continue
        base = lm.around("".join(s), i)
        best, gain = None, threshold
        for cand in options:
            trial = [*s[:i], cand, *s[i + 1 :]]
            delta = lm.around("".join(trial), i) - base
            if delta > gain:
                best, gain = cand, delta
        if best is not None:
            s[i] = best
    return "".join(s[2:-1])


def ngram_predict(split: TaskSplit, corpus_lines: int = 20000) -> dict:
    """Dev and test corrections of the confusion-set + trigram corrector, its threshold chosen on dev."""
    clean = [ex.label for ex in split.train if ex.label]
    corpus = [t for t in DEMO_CORPUS.read_text(encoding="utf-8").split("\n") if t.strip()][:corpus_lines]
    lm = CharTrigramLM(clean + corpus)
    table = confusions()
    sources = [ex.texts[0] for ex in split.dev]
    targets = [ex.label or "" for ex in split.dev]
    best, best_f1, best_out = THRESHOLDS[0], -1.0, sources
    for threshold in THRESHOLDS:
        out = [correct(t, lm, table, threshold) for t in sources]
        f1 = correction_scores(sources, targets, out)["correct_f1"]
        if f1 > best_f1:
            best, best_f1, best_out = threshold, f1, out
    return {
        "dev": best_out,
        "test": [correct(ex.texts[0], lm, table, best) for ex in split.test],
        "threshold": best,
    }
