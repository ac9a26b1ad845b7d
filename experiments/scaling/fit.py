"""Power-law fits y = a · C^b on log-log axes (ordinary least squares), with t-intervals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PowerLaw:
    """y = a · C^b fitted to n points; b_lo, b_hi: the `level` confidence interval of b;
    r2: on log-log axes."""

    a: float
    b: float
    b_lo: float
    b_hi: float
    r2: float
    n: int
    level: float

    def __call__(self, c: np.ndarray) -> np.ndarray:
        return self.a * np.asarray(c, float) ** self.b

    def band(self, c: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The confidence band of the fitted mean at compute c (fit data x, y, natural)."""
        lx, ly, lc = np.log(x), np.log(y), np.log(np.asarray(c, float))
        resid = ly - (np.log(self.a) + self.b * lx)
        s = np.sqrt(resid @ resid / (self.n - 2))
        sxx = ((lx - lx.mean()) ** 2).sum()
        half = (
            stats.t.ppf((1 + self.level) / 2, self.n - 2)
            * s
            * np.sqrt(1 / self.n + (lc - lx.mean()) ** 2 / sxx)
        )
        mid = np.log(self.a) + self.b * lc
        return np.exp(mid - half), np.exp(mid + half)


def fit_power_law(c: np.ndarray, y: np.ndarray, level: float = 0.95) -> PowerLaw:
    """OLS of log y on log C. Needs 3+ points with positive values."""
    c, y = np.asarray(c, float), np.asarray(y, float)
    if len(c) < 3 or (c <= 0).any() or (y <= 0).any():
        raise ValueError(f"a power-law fit needs 3+ positive points, got {len(c)}")
    res = stats.linregress(np.log(c), np.log(y))
    half = stats.t.ppf((1 + level) / 2, len(c) - 2) * res.stderr
    return PowerLaw(
        float(np.exp(res.intercept)), float(res.slope), float(res.slope - half),
        float(res.slope + half), float(res.rvalue**2), len(c), level,
    )  # fmt: skip


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The compute-efficient frontier: the points (compute, value) no point of less or
    equal compute beats, in order of compute."""
    out: list[tuple[float, float]] = []
    for c, v in sorted(points):
        if not out or v < out[-1][1]:
            out.append((c, v))
    return out
