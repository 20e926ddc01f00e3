"""Retrieval metrics against hand-worked examples."""

import math

import pytest

from models.eval.metrics import judged_precision_at_k, ndcg_at_k, overlap_at_k, recall_at_k


def test_ndcg_hand_worked():
    judged = {"a": 3.0, "b": 2.0, "c": 1.0}  # gains 2, 1, 0
    # ranking b, x (unjudged), a: DCG = 1/log2(2) + 0 + 2/log2(4) = 1 + 1 = 2
    # ideal a, b: 2/1 + 1/log2(3)
    expected = 2.0 / (2.0 + 1.0 / math.log2(3))
    assert ndcg_at_k(["b", "x", "a"], judged, 10) == pytest.approx(expected)
    assert ndcg_at_k(["a", "b"], judged, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["c"], {"c": 1.0}, 10) is None  # nothing to gain: not scorable


def test_ndcg_cut_at_k():
    judged = {"a": 3.0}
    assert ndcg_at_k(["x", "a"], judged, 1) == 0.0
    assert ndcg_at_k(["x", "a"], judged, 2) == pytest.approx(1 / math.log2(3))


def test_recall_and_precision():
    judged = {"a": 3.0, "b": 2.5, "c": 2.0, "d": 1.0}
    assert recall_at_k(["a", "x", "c"], judged, 10) == pytest.approx(0.5)  # relevant: a, b
    assert recall_at_k(["a"], {"d": 1.0}, 10) is None
    assert judged_precision_at_k(["a", "c", "x", "d"], judged, 10) == pytest.approx(1 / 3)
    assert judged_precision_at_k(["x"], judged, 10) is None


def test_overlap():
    assert overlap_at_k([1, 2, 3], [3, 2, 9], 3) == pytest.approx(2 / 3)


def test_ndcg_over_keywords_scores_hd_keywords_as_their_products_and_others_as_unjudged():
    from models.eval.judged import ndcg_over_keywords

    judgments = [{"1": 3.0}, {"1": 3.0}]
    # the judged product first: 1.0; after an unjudged web keyword: 2 / log2(3) over 2
    assert ndcg_over_keywords([["hd:1", "mq:x"], ["mq:x", "hd:1"]], judgments) == pytest.approx(
        round((1.0 + 1 / math.log2(3)) / 2, 4))
