"""Replicated weighted moments: unit weights are FeatureStats, integer weights duplicate."""

from __future__ import annotations

import numpy as np
import pytest

from iddpm.eval.fid import FeatureStats, fid_from_stats
from iddpm.eval.moments import ReplicatedMoments


def test_unit_weights_match_feature_stats_and_the_frechet_distance() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6)) @ rng.standard_normal((6, 6))
    ref = FeatureStats(dim=6).add(rng.standard_normal((500, 6)))
    m = ReplicatedMoments(6, 1)
    for lo in range(0, 300, 70):
        m.add(x[lo : lo + 70], np.ones((len(x[lo : lo + 70]), 1)))
    direct = FeatureStats(dim=6).add(x)
    np.testing.assert_allclose(m.stats().outer_sum, direct.outer_sum, rtol=1e-12)
    assert m.stats().count == 300
    assert m.distances_to(ref)[0] == pytest.approx(fid_from_stats(direct, ref), rel=1e-8)


def test_integer_weights_equal_duplicated_rows_and_states_add() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 3))
    w = np.stack([np.ones(50), rng.integers(0, 3, 50)], axis=1).astype(float)
    a, b, whole = ReplicatedMoments(3, 2), ReplicatedMoments(3, 2), ReplicatedMoments(3, 2)
    a.add(x[:20], w[:20])
    b.add(x[20:], w[20:])
    whole.add(x, w)
    a.load_arrays(b.arrays())
    np.testing.assert_allclose(a.outer, whole.outer, rtol=1e-12)
    dup = FeatureStats(dim=3).add(np.repeat(x, w[:, 1].astype(int), axis=0))
    ref = FeatureStats.from_moments(np.zeros(3), np.eye(3))
    assert whole.distances_to(ref)[1] == pytest.approx(fid_from_stats(dup, ref), rel=1e-8)


def test_shapes_and_non_finite_features_are_refused() -> None:
    m = ReplicatedMoments(3, 2)
    with pytest.raises(ValueError, match="weights"):
        m.add(np.zeros((4, 3)), np.ones((4, 1)))
    with pytest.raises(ValueError, match="NaN"):
        m.add(np.full((1, 3), np.nan), np.ones((1, 2)))
