"""Generation metrics against hand-computed cases, and the lead floor tuned on dev."""

from __future__ import annotations

import math

import pytest

from fs_ray.generation import bleu, char_tokens, generation_scores, lead, lead_floor, rouge


def test_rouge_is_character_level_and_matches_a_hand_computed_case():
    # 我爱北京 vs 我爱上海: unigrams share 我 爱 (P = R = 2/4); bigrams share 我爱 (1/3); LCS 我爱 (2/4)
    assert rouge(["我爱北京"], ["我爱上海"]) == pytest.approx(
        {"rouge1": 50.0, "rouge2": 100 / 3, "rougeL": 50.0}
    )
    # no word segmenter in between: 北京大学 vs 北京 scores on characters (P 2/4, R 2/2 -> F 2/3)
    assert rouge(["北京大学"], ["北京"])["rouge1"] == pytest.approx(200 / 3)
    # the mean over examples; spaces and case do not count
    assert rouge(["A b", "完全不同"], ["ab", "一样"]) == pytest.approx(
        {"rouge1": 50.0, "rouge2": 50.0, "rougeL": 50.0}
    )
    assert char_tokens("Hello 世界") == list("hello世界")


def test_bleu4_matches_a_hand_computed_case():
    # every n-gram precision is 1; brevity penalty exp(1 - 9/7) for 7 characters against 9
    assert bleu(["我爱北京天安门"], ["我爱北京天安门广场"]) == pytest.approx(
        100 * math.exp(1 - 9 / 7), abs=1e-6
    )
    # corpus level: n-gram counts pooled over sentences. 我爱北京 vs 我爱上海: 2/4, 1/3, 0/2, 0/1 -> 0
    assert bleu(["我爱北京"], ["我爱上海"]) == 0.0
    assert bleu(["今天天气很好"], ["今天天气很好"]) == pytest.approx(100.0)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        rouge(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        bleu(["a", "b"], ["a"])


def test_lead_floor_picks_the_k_that_scores_best_on_dev():
    # targets are each source's first 4 characters: k = 4 is perfect, any other k is not
    sources = ["今天北京天气很好我们去公园", "明天上海下雨大家带伞出门", "这家餐厅的菜很好吃推荐"]
    targets = [s[:4] for s in sources]
    k, scores = lead_floor(sources, targets)
    assert k == 4 and scores["rougeL"] == pytest.approx(100.0) and scores["bleu4"] == pytest.approx(100.0)
    assert lead("a b c", 2) == "ab" and lead("abc", 0) == ""
    assert set(generation_scores(["a"], ["a"])) == {"rouge1", "rouge2", "rougeL", "bleu4"}
