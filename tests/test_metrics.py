"""Ranking and matching metrics on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from hiea_ray.core.metrics import gold_ranks, matching_metrics, ranking_metrics


def test_gold_ranks():
    cand = np.array([[5, 6, 7], [7, 5, 6], [1, 2, 3], [-1, -1, -1]])
    gold = np.array([5, 6, 9, 1])
    np.testing.assert_array_equal(gold_ranks(cand, gold), [1, 3, 0, 0])


def test_ranking_metrics_by_hand():
    # gold at rank 1, 2, 5, absent, 10 (the last column)
    cand = np.array(
        [
            [10, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            [1, 11, 2, 3, 4, 5, 6, 7, 8, 9],
            [1, 2, 3, 4, 12, 5, 6, 7, 8, 9],
            [1, 2, 3, 4, 5, 6, 7, 8, 9, -1],
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 14],
        ]
    )
    gold = np.array([10, 11, 12, 13, 14])
    m = ranking_metrics(cand, gold, hits_at=(1, 2, 5, 10))
    assert m["hits@1"] == pytest.approx(1 / 5)
    assert m["hits@2"] == pytest.approx(2 / 5)
    assert m["hits@5"] == pytest.approx(3 / 5)
    assert m["hits@10"] == pytest.approx(4 / 5)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 0 + 1 / 10) / 5)
    assert m["recall@k"] == pytest.approx(4 / 5)
    assert m["n"] == 5


def test_ranking_metrics_gold_absent_is_zero():
    cand = np.array([[1, 2], [3, 4]])
    m = ranking_metrics(cand, np.array([9, 8]), hits_at=(1, 10))
    assert m["hits@1"] == m["hits@10"] == m["mrr"] == m["recall@k"] == 0.0


def test_ranking_metrics_empty():
    m = ranking_metrics(np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert m["n"] == 0 and m["mrr"] == 0.0 and m["hits@1"] == 0.0


def test_matching_metrics_by_hand():
    gold_src, gold_tgt = np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])
    # (1,10) right, (2,21) wrong, (3,30) right, (9,90) not a test source: out of scope
    m = matching_metrics(np.array([1, 2, 3, 9]), np.array([10, 21, 30, 90]), gold_src, gold_tgt)
    p, r = 2 / 3, 2 / 4
    assert m["precision"] == pytest.approx(p)
    assert m["recall"] == pytest.approx(r)
    assert m["f1"] == pytest.approx(2 * p * r / (p + r))
    assert m["predicted"] == 3 and m["correct"] == 2


def test_matching_metrics_edge_cases():
    gold_src, gold_tgt = np.array([1, 2]), np.array([10, 20])
    m = matching_metrics(np.array([], dtype=np.int64), np.array([], dtype=np.int64), gold_src, gold_tgt)
    assert m == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "predicted": 0, "correct": 0}
    m = matching_metrics(np.array([2, 1]), np.array([20, 10]), gold_src, gold_tgt)
    assert m["precision"] == m["recall"] == m["f1"] == 1.0
    m = matching_metrics(np.array([1]), np.array([20]), gold_src, gold_tgt)
    assert m["precision"] == m["recall"] == m["f1"] == 0.0
