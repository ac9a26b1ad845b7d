"""experiments/scaling: the power-law fit recovers a known exponent inside its interval, the
frontier keeps only points no cheaper point beats, and FLOPs per step grow with width."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # experiments/ is a plain folder at the root, not installed
    sys.path.insert(0, str(REPO))

from experiments.scaling.fit import fit_power_law, frontier  # noqa: E402
from experiments.scaling.ladder import flops_per_step, steps_for_budget, width_config  # noqa: E402


def test_fit_recovers_a_power_law_within_its_interval() -> None:
    rng = np.random.default_rng(0)
    c = np.geomspace(1e9, 1e13, 12)
    y = 3.0 * c**-0.2 * np.exp(rng.normal(0, 0.02, c.size))
    law = fit_power_law(c, y)
    assert law.b_lo < -0.2 < law.b_hi and law.b_hi - law.b_lo < 0.05
    lo, hi = law.band(c, c, y)
    assert (lo < law(c)).all() and (law(c) < hi).all()
    with pytest.raises(ValueError, match="3\\+ positive points"):
        fit_power_law(c[:2], y[:2])


def test_frontier_keeps_points_no_cheaper_point_beats() -> None:
    pts = [(1, 5.0), (2, 4.0), (3, 4.5), (4, 3.0), (5, 3.0), (6, 2.0)]
    assert frontier(pts) == [(1, 5.0), (2, 4.0), (4, 3.0), (6, 2.0)]


def test_flops_grow_with_width_and_set_the_steps() -> None:
    small, large = (flops_per_step(width_config(w, 8)) for w in (8, 16))
    assert 2.5 < large / small < 4.5  # convolutions: about width squared
    assert steps_for_budget(100 * large, small) > steps_for_budget(100 * large, large) == 100
