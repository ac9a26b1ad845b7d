"""Poisson bootstrap: weights that do not depend on how a job is cut, intervals that cover
the truth at about their nominal rate, plain verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from iddpm.eval.bootstrap import Interval, check_replicates, interval, poisson_weights, verdict
from iddpm.eval.fid import FeatureStats
from iddpm.eval.moments import ReplicatedMoments


def test_weights_depend_only_on_seed_index_and_replicate() -> None:
    whole = poisson_weights(7, 0, 5000, 8)
    assert whole.shape == (5000, 9) and (whole[:, 0] == 1).all()
    pieces = [poisson_weights(7, lo, min(lo + 333, 5000), 8) for lo in range(0, 5000, 333)]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    assert not np.array_equal(poisson_weights(8, 0, 5000, 8), whole)
    assert abs(whole[:, 1:].mean() - 1.0) < 0.05 and abs(whole[:, 1:].var() - 1.0) < 0.05


def test_normal_interval_of_replicates() -> None:
    values = np.array([10.0, 9.0, 11.0, 10.0, 12.0, 8.0])
    got = interval(values, level=0.95)
    sd = np.std(values[1:], ddof=1)
    assert got.estimate == 10.0 and got.std == pytest.approx(sd)
    assert got.low == pytest.approx(10 - 1.959964 * sd, rel=1e-6) and got.replicates == 5
    assert np.isnan(interval(np.array([1.0, np.nan])).low)  # too few finite replicates


def test_fid_interval_covers_its_expected_value_at_the_nominal_rate() -> None:
    """Generated features ~ N(0.1, diag(0.8..1.5)), D = 4, n = 400, against fixed reference
    moments N(0, I). Truth: E[FID_n] by Monte Carlo over 1,500 sets (what another seed
    gives on average). 100 trials × 60 replicates; a 95% interval must cover 85–100%
    (binomial sd of the coverage at 100 trials: 2.2 points)."""
    d, n, reps = 4, 400, 60
    ref = FeatureStats.from_moments(np.zeros(d), np.eye(d))
    scale = np.sqrt(np.linspace(0.8, 1.5, d))

    def fid_values(seed: int, replicates: int) -> np.ndarray:
        x = np.random.default_rng(seed).standard_normal((n, d)) * scale + 0.1
        m = ReplicatedMoments(d, 1 + replicates)
        m.add(x, poisson_weights(seed, 0, n, replicates))
        return m.distances_to(ref)

    truth = np.mean([fid_values(100_000 + s, 0)[0] for s in range(1500)])
    covered = [
        (lambda i: i.low <= truth <= i.high)(interval(fid_values(s, reps))) for s in range(100)
    ]
    assert 0.85 <= np.mean(covered) <= 1.0, np.mean(covered)


@pytest.mark.parametrize(
    ("low", "high", "lower_is_better", "expected"),
    [
        (-2.0, 1.0, True, "no significant difference"),
        (-2.0, -1.0, True, "A is better"),
        (1.0, 2.0, True, "B is better"),
        (1.0, 2.0, False, "A is better"),
    ],
)
def test_verdicts(low, high, lower_is_better, expected) -> None:
    diff = Interval((low + high) / 2, low, high, 1.0, 0.95, 100)
    assert verdict(diff, lower_is_better).startswith(expected)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_replicates_must_be_a_positive_integer(bad) -> None:
    with pytest.raises(ValueError, match="--bootstrap"):
        check_replicates(bad)
