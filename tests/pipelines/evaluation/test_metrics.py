"""Metric functions against hand-computed cases: ties, target at rank 1, target outside the top k."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maf_pipeline.metrics import (
    metric_values,
    pad_right,
    pessimistic_rank,
    rank_targets,
    sample_negatives,
    summarize,
)


def test_pessimistic_rank_hand_cases() -> None:
    scores = torch.tensor(
        [
            [float("-inf"), 0.9, 0.1, 0.5, 0.3],  # target col 1: best -> rank 1
            [float("-inf"), 0.2, 0.2, 0.2, 0.9],  # target col 2: 1 higher + 2 ties -> rank 4
            [float("-inf"), 0.5, 0.5, 0.5, 0.5],  # constant scorer: rank 4 = number of real items (no credit)
            [float("-inf"), 0.1, float("nan"), 0.3, 0.2],  # NaN target = -inf: last of all 5 columns
        ]
    )
    ranks = pessimistic_rank(scores, torch.tensor([1, 2, 3, 2])).tolist()
    assert ranks == [1, 4, 4, 5]


def test_metric_values_hand_cases() -> None:
    values = metric_values(np.array([1, 3, 11, 25]), ks=(10, 20))
    np.testing.assert_allclose(values["recall@10"], [1, 1, 0, 0])
    np.testing.assert_allclose(values["recall@20"], [1, 1, 1, 0])
    np.testing.assert_allclose(values["ndcg@10"], [1.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(values["ndcg@20"], [1.0, 0.5, 1 / math.log2(12), 0.0])
    np.testing.assert_allclose(values["mrr"], [1, 1 / 3, 1 / 11, 1 / 25])
    summary = summarize(np.array([1, 3, 11, 25]), ks=(10, 20))
    assert summary["recall@10"] == 0.5 and summary["num_users"] == 4
    assert summary["ndcg@10"] == pytest.approx(0.375)
    assert set(metric_values(np.array([2]), ks=(1, 5))) == {"recall@1", "ndcg@1", "recall@5", "ndcg@5", "mrr"}
    with pytest.raises(ValueError, match="1-based"):
        metric_values(np.array([0]))


class FixedScorer(torch.nn.Module):
    """Scores item i as ``weights[i]`` whatever the history."""

    def __init__(self, weights: list[float]) -> None:
        super().__init__()
        self.register_buffer("w", torch.tensor(weights))

    def full_sort_scores(self, item_seq: torch.Tensor) -> torch.Tensor:
        return self.w.expand(item_seq.size(0), -1)


def test_rank_targets_full_masked_and_sampled() -> None:
    scorer = FixedScorer([float("-inf"), 5.0, 4.0, 3.0, 2.0, 1.0])  # items 1..5, best first
    histories = [np.array([1, 2]), np.array([4])]
    targets = np.array([3, 3])
    assert rank_targets(scorer, histories, targets, max_len=5).tolist() == [3, 3]
    # masking user 0's history (1, 2, and the target 3 itself, which must stay) lifts the target to rank 1
    exclude = [np.array([1, 2, 3]), np.array([4])]
    assert rank_targets(scorer, histories, targets, 5, exclude=exclude).tolist() == [1, 3]
    # sampled: candidates = target + negatives (0 = missing negative, never above the target)
    negatives = np.array([[5, 4], [1, 0]])
    assert rank_targets(scorer, histories, targets, 5, negatives=negatives).tolist() == [1, 2]


def test_sample_negatives_avoid_interacted_items_and_are_seeded() -> None:
    seen = [np.array([1, 2, 3]), np.arange(1, 9), np.array([], dtype=np.int64)]
    a = sample_negatives(seen, num_items=10, num_negatives=5, seed=3)
    b = sample_negatives(seen, num_items=10, num_negatives=5, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 5)
    assert len(set(a[0])) == 5 and not set(a[0]) & {1, 2, 3} and set(a[0]) <= set(range(1, 11))
    assert sorted(a[1][a[1] > 0]) == [9, 10] and (a[1] == 0).sum() == 3  # only 2 items left for user 1
    assert (a[2] > 0).all()
    assert not np.array_equal(a, sample_negatives(seen, 10, 5, seed=4))


def test_pad_right_keeps_the_most_recent_items() -> None:
    out = pad_right([np.array([1, 2, 3, 4]), np.array([7])], max_len=3)
    assert out.tolist() == [[2, 3, 4], [7, 0, 0]]
