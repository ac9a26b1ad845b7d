"""Kernel Inception Distance (Bińkowski et al. 2018): the unbiased estimate of MMD² with
the cubic polynomial kernel k(x, y) = (xᵀy / d + 1)³, averaged over random subsets.

For subsets X (m generated features) and Y (m reference features),

    MMD²_u = Σ_{i≠j} k(x_i, x_j) / (m(m−1)) + Σ_{i≠j} k(y_i, y_j) / (m(m−1))
             − 2 Σ_{i,j} k(x_i, y_j) / m²,

an unbiased estimate (it can be negative). KID is its mean over `subsets` (100) pairs of
subsets of size `subset_size` (1000, or the smaller set's size) drawn without replacement
with a fixed seed, and its standard deviation over the subsets is reported beside it, as
torch-fidelity and the ADM evaluator do.

Bootstrap replicates reweight the generated rows (weights w from `iddpm.eval.bootstrap`):
the X terms become the weighted U-statistic Σ_{i≠j} w_i w_j k_ij / ((Σw)² − Σw²) and the
cross term Σ_i w_i Σ_j k_ij / (m Σw); for unit weights these are the formulas above. The
kernel matrices of each subset are computed once for all replicates.
"""

from __future__ import annotations

import numpy as np

SUBSETS = 100
SUBSET_SIZE = 1000
SEED = 0


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(aᵀb / d + 1)³ for a [n, d], b [m, d] → [n, m] float64."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def kid_replicates(
    real: np.ndarray,
    fake: np.ndarray,
    weights: np.ndarray | None = None,
    subsets: int = SUBSETS,
    subset_size: int = SUBSET_SIZE,
    seed: int = SEED,
) -> np.ndarray:
    """KID of every subset and replicate: [R, subsets] (R = weights' columns, 1 without).

    real [N, d], fake [M, d] features; weights [M, R] of the fake rows."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"KID needs [N, d] and [M, d] features, got {real.shape} and {fake.shape}")
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {len(real)}, {len(fake)}")
    if weights is None:
        weights = np.ones((len(fake), 1))
    rng = np.random.default_rng(seed)
    out = np.empty((weights.shape[1], subsets))
    for s in range(subsets):
        x_idx = rng.choice(len(fake), m, replace=False)
        y = real[rng.choice(len(real), m, replace=False)]
        x, w = fake[x_idx], weights[x_idx]  # w [m, R]
        k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
        np.fill_diagonal(k_xx, 0.0)
        yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        wsum = w.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            xx = (w * (k_xx @ w)).sum(axis=0) / (wsum**2 - (w**2).sum(axis=0))
            xy = (w * k_xy.sum(axis=1, keepdims=True)).sum(axis=0) / (m * wsum)
        out[:, s] = xx + yy - 2.0 * xy
    return out


def kid(
    real: np.ndarray,
    fake: np.ndarray,
    subsets: int = SUBSETS,
    subset_size: int = SUBSET_SIZE,
    seed: int = SEED,
) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD² over subsets (module docstring)."""
    values = kid_replicates(real, fake, None, subsets, subset_size, seed)[0]
    return float(values.mean()), float(values.std())
