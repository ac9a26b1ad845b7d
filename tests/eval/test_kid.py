"""KID: the unbiased MMD² against a closed form, ≈ 0 for one distribution, weights."""

from __future__ import annotations

import numpy as np
import pytest

from iddpm.eval.kid import kid, kid_replicates, polynomial_kernel


def _moments(mu: float, var: float) -> np.ndarray:
    """E X, E X², E X³ of N(mu, var)."""
    return np.array([mu, mu**2 + var, mu**3 + 3 * mu * var])


def _closed_form_mmd2(mu_x: float, var_x: float, mu_y: float, var_y: float) -> float:
    """d = 1: k(x, y) = (xy + 1)³ = x³y³ + 3x²y² + 3xy + 1, so
    MMD² = (a₃ − b₃)² + 3(a₂ − b₂)² + 3(a₁ − b₁)² with a_k, b_k the raw moments."""
    a, b = _moments(mu_x, var_x), _moments(mu_y, var_y)
    return float((a[2] - b[2]) ** 2 + 3 * (a[1] - b[1]) ** 2 + 3 * (a[0] - b[0]) ** 2)


def test_kernel_is_the_cubic_polynomial() -> None:
    a, b = np.array([[1.0, 2.0]]), np.array([[3.0, -1.0], [0.0, 0.0]])
    np.testing.assert_allclose(polynomial_kernel(a, b), [[(1 / 2 + 1) ** 3, 1.0]])


def test_unbiased_against_the_closed_form_and_zero_for_one_distribution() -> None:
    """Mean over independent draws of small sets (m = 20, where the biased V-statistic is
    off by O(1/m)) matches the population MMD² within 4 standard errors."""
    rng = np.random.default_rng(0)
    for (mx, vx), truth in (((0.3, 1.5), _closed_form_mmd2(0.3, 1.5, 0.0, 1.0)), ((0, 1), 0.0)):
        values = []
        for _ in range(400):
            x = rng.normal(mx, np.sqrt(vx), (20, 1))
            y = rng.standard_normal((20, 1))
            values.append(kid_replicates(y, x, subsets=1, subset_size=20)[0, 0])
        values = np.array(values)
        se = values.std() / np.sqrt(len(values))
        assert abs(values.mean() - truth) < 4 * se, (values.mean(), truth, se)
    # the V-statistic (diagonal kept) is visibly biased on the same-distribution case
    x, y = rng.standard_normal((20, 1)), rng.standard_normal((20, 1))
    v_stat = (polynomial_kernel(x, x).mean() + polynomial_kernel(y, y).mean()
              - 2 * polynomial_kernel(x, y).mean())  # fmt: skip
    assert v_stat > 0


def test_identical_sets_give_about_zero_with_std_over_subsets() -> None:
    x = np.random.default_rng(1).standard_normal((3000, 8))
    mean, std = kid(x, x, subsets=20, subset_size=500)
    # subsets of one pool share rows, so their mean is not 20 independent draws: within
    # one subset-to-subset std; the population value is 0
    assert abs(mean) < std and 0 < std < 0.05


def test_unit_weights_are_the_unweighted_estimate_and_zero_weights_drop_rows() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((30, 3)) + 0.5, rng.standard_normal((40, 3))
    w = np.ones((30, 2))
    w[:10, 1] = 0.0  # replicate 1 drops the first ten generated rows
    both = kid_replicates(y, x, w, subsets=1, subset_size=30)
    assert both[0, 0] == pytest.approx(kid_replicates(y, x, subsets=1, subset_size=30)[0, 0])
    # dropping rows by weight = the U-statistic over the remaining rows (same y subset)
    k_xx = polynomial_kernel(x[10:], x[10:])
    rng2 = np.random.default_rng(0)
    rng2.choice(30, 30, replace=False)
    ys = y[rng2.choice(40, 30, replace=False)]
    k_yy, k_xy = polynomial_kernel(ys, ys), polynomial_kernel(x[10:], ys)
    expected = ((k_xx.sum() - np.trace(k_xx)) / (20 * 19)
                + (k_yy.sum() - np.trace(k_yy)) / (30 * 29) - 2 * k_xy.mean())  # fmt: skip
    assert both[1, 0] == pytest.approx(expected, rel=1e-10)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        kid(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        kid(np.zeros((4, 3)), np.zeros((5, 2)))
