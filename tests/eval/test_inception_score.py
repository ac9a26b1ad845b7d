"""Inception Score from running sums: hand-computed cases, splits, streaming, weights."""

from __future__ import annotations

import numpy as np
import pytest

from iddpm.eval.inception_score import ScoreSums, inception_score, probabilities

BIG = 50.0  # logits that make softmax one-hot to float64 precision


def _one_hot_logits(labels: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k)[labels] * BIG


@pytest.mark.parametrize("k", [2, 10, 37])
def test_uniform_one_hot_predictions_score_the_number_of_classes(k: int) -> None:
    labels = np.tile(np.arange(k), 10)  # every part holds each class once
    mean, std = inception_score(_one_hot_logits(labels, k), splits=10)
    assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_identical_predictions_score_one_and_hand_computed_case() -> None:
    mean, _ = inception_score(np.tile([[0.3, -1.0, 2.0]], (12, 1)), splits=3)
    assert mean == pytest.approx(1.0, abs=1e-12)
    # two samples, p1 = (0.5, 0.5), p2 = (1, 0): m = (0.75, 0.25);
    # KL1 = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25), KL2 = ln(1/0.75)
    p = np.array([[0.5, 0.5], [1.0, 0.0]])
    sums = ScoreSums(2, 2, splits=1)
    sums.add(p, 0, np.ones((2, 1)))
    kl = (0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(2.0) + np.log(1 / 0.75)) / 2
    assert sums.scores()[0, 0] == pytest.approx(np.exp(kl), rel=1e-12)


def test_streamed_batches_in_any_order_equal_one_shot() -> None:
    rng = np.random.default_rng(0)
    probs = probabilities(rng.standard_normal((103, 7)) * 3)
    whole = ScoreSums(7, 103, splits=4)
    whole.add(probs, 0, np.ones((103, 1)))
    parts = ScoreSums(7, 103, splits=4)
    for lo in (60, 0, 17, 90):  # batches that straddle the parts, out of order
        hi = {60: 90, 0: 17, 17: 60, 90: 103}[lo]
        parts.add(probs[lo:hi], lo, np.ones((hi - lo, 1)))
    np.testing.assert_allclose(parts.scores(), whole.scores(), rtol=1e-12)


def test_integer_weights_equal_duplicated_samples() -> None:
    rng = np.random.default_rng(1)
    probs = probabilities(rng.standard_normal((20, 5)))
    w = rng.integers(0, 3, 20).astype(float)
    weighted = ScoreSums(5, 20, splits=1, replicates=2)
    weighted.add(probs, 0, np.stack([np.ones(20), w], axis=1))
    dup = np.repeat(probs, w.astype(int), axis=0)
    assert weighted.scores()[1, 0] == pytest.approx(inception_score(np.log(dup), 1)[0], rel=1e-10)


def test_more_splits_than_samples_is_refused() -> None:
    with pytest.raises(ValueError, match="splits"):
        ScoreSums(3, 2, splits=5)
