"""Correction scores on hand-computed cases: sentence level as pycorrector's SIGHAN leaderboard
counts (wrong fixes of wrong sentences cost recall), character level, unequal lengths."""

from __future__ import annotations

import pytest

from fs_ray.correction import changed_positions, correction_scores

CASES = [  # (source, target, output)
    ("我有一点事情阿", "我有一点事情啊", "我有一点事情啊"),  # fixed: detect TP, correct TP
    ("他门在哪", "他们在哪", "他闷在哪"),  # right place, wrong character: detect TP, correct FN
    ("抱见", "抱歉", "抱见"),  # missed: detect FN, correct FN
    ("天很蓝", "天很蓝", "天很蓝"),  # clean and left alone: TN, TN
    ("天很蓝", "天很蓝", "天很篮"),  # clean but changed: FP, FP
    ("我很报见", "我很抱歉", "我很抱见"),  # two errors, one fixed: FN, FN
]


def test_sentence_and_character_scores_match_the_hand_counts():
    s = correction_scores(*zip(*CASES, strict=True))
    # detection: TP 2, FN 2, FP 1, TN 1
    assert s["detect_precision"] == pytest.approx(2 / 3) and s["detect_recall"] == pytest.approx(2 / 4)
    assert s["detect_f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    # correction: TP 1, FN 3, FP 1, TN 1
    assert s["correct_precision"] == pytest.approx(1 / 2) and s["correct_recall"] == pytest.approx(1 / 4)
    assert s["correct_f1"] == pytest.approx(1 / 3)
    assert s["sentence_accuracy"] == pytest.approx(2 / 6) and s["positives"] == 4
    # characters: 5 wrong in the sources, 4 changed by the outputs, 3 of them wrong ones, 2 made right
    assert s["char_detect_precision"] == pytest.approx(3 / 4) and s["char_detect_recall"] == pytest.approx(
        3 / 5
    )
    assert s["char_correct_precision"] == pytest.approx(2 / 4) and s["char_correct_recall"] == pytest.approx(
        2 / 5
    )


def test_copying_the_input_scores_zero_and_a_perfect_output_one():
    sources, targets, _ = zip(*CASES, strict=True)
    copy = correction_scores(sources, targets, sources)
    assert copy["correct_f1"] == copy["detect_f1"] == copy["char_correct_f1"] == 0.0
    assert copy["sentence_accuracy"] == pytest.approx(2 / 6)  # the two clean sentences
    perfect = correction_scores(sources, targets, targets)
    assert perfect["correct_f1"] == perfect["detect_f1"] == perfect["char_correct_f1"] == 1.0


def test_outputs_of_another_length_are_aligned():
    assert changed_positions("今天好", "今天很好") == {2}  # an insertion before position 2
    assert changed_positions("我们去公园园", "我们去公园") == {5}
    assert changed_positions("他门在哪", "他们在哪") == {1}
    s = correction_scores(["我们去公园园", "今天好"], ["我们去公园", "今天好"], ["我们去公园", "今天很好"])
    assert (s["correct_precision"], s["correct_recall"]) == (
        0.5,
        1.0,
    )  # one fixed, one clean sentence changed
    assert s["char_correct_recall"] == 1.0
    with pytest.raises(ValueError, match="2 sources, 1 targets, 2 outputs"):
        correction_scores(["a", "b"], ["a"], ["a", "b"])


def test_edits_name_each_change_by_its_position_in_the_source():
    from fs_ray.correction import edits

    assert edits("我们去公园完", "我们去公园玩") == [{"position": 5, "original": "完", "corrected": "玩"}]
    assert edits("天气很好", "天气很好") == []
    # lengths differ: the alignment's edits; a deletion and an insertion
    assert edits("我们们去公园", "我们去公园") == [{"position": 1, "original": "们", "corrected": ""}]  # either 们
    assert edits("我去公园", "我们去公园") == [{"position": 1, "original": "", "corrected": "们"}]
    assert edits("我去公园", "我去公园了") == [{"position": 4, "original": "", "corrected": "了"}]  # at the end
    # a rewrite of the same length is aligned, not read position by position
    assert edits("我去公园了", "我们去公园") == [
        {"position": 1, "original": "", "corrected": "们"},
        {"position": 4, "original": "了", "corrected": ""},
    ]
    assert len(edits("我去公园了", "我们去公园", in_place=True)) == 4  # an MLM corrector's reading
    with pytest.raises(ValueError, match="keeps the length"):
        edits("我去公园", "我们去公园", in_place=True)
    # an equal-length replaced span inside a rewrite is split into characters, unchanged ones left out
    assert edits("他的成积很好啊", "他的成绩很好") == [
        {"position": 3, "original": "积", "corrected": "绩"},
        {"position": 6, "original": "啊", "corrected": ""},
    ]
