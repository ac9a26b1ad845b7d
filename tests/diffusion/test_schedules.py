"""Noise schedules (docs/paper.md P4, P5)."""

from __future__ import annotations

import math

import pytest
import torch

from iddpm.diffusion import schedules


@pytest.mark.parametrize("T", [21, 100, 1000, 4000])
def test_linear_endpoints_scale_with_T(T: int) -> None:
    betas = schedules.linear(T)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    scale = 1000.0 / T
    assert betas[0].item() == pytest.approx(scale * 1e-4, rel=1e-15)
    if T > 1:
        assert betas[-1].item() == pytest.approx(scale * 0.02, rel=1e-15)
        # evenly spaced
        diffs = betas.diff()
        torch.testing.assert_close(diffs, diffs.new_full(diffs.shape, diffs[0].item()))


@pytest.mark.parametrize("T", [10, 1000, 4000])
def test_cosine_alpha_bar_matches_f_ratio(T: int) -> None:
    s = 0.008
    betas = schedules.cosine(T)
    abar = torch.cumprod(1.0 - betas, 0)

    def f(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    want = torch.tensor([f(t + 1) / f(0) for t in range(T)], dtype=torch.float64)
    # Only the last step is clipped (β ≤ 0.999); before it ᾱ matches f(t)/f(0) to rounding.
    torch.testing.assert_close(abar[:-1], want[:-1], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", schedules.NAMES)
@pytest.mark.parametrize("T", [21, 100, 4000])
def test_betas_bounded_and_alpha_bar_decreasing(name: str, T: int) -> None:
    betas = schedules.get(name, T)
    assert bool((betas > 0).all()) and bool((betas <= 0.999).all())
    abar = torch.cumprod(1.0 - betas, 0)
    assert bool((abar.diff() < 0).all())


def test_cosine_first_beta_is_below_a_pixel_bin_squared() -> None:
    # The offset s makes √β_1 slightly smaller than the bin width 1/127.5 (the paper's 3.2).
    beta1 = schedules.cosine(4000)[0].item()
    assert math.sqrt(beta1) < 1 / 127.5


def test_cosine_clips_last_beta_to_max() -> None:
    assert schedules.cosine(1000)[-1].item() == 0.999
    assert schedules.cosine(1000, max_beta=0.5).max().item() == 0.5


def test_unknown_schedule_names_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown noise schedule 'cosin'; choose one of: linear"):
        schedules.get("cosin", 10)


@pytest.mark.parametrize("T", [0, -3, 2.5])
def test_bad_number_of_steps(T) -> None:
    with pytest.raises(ValueError, match="integer >= 1"):
        schedules.get("linear", T)


@pytest.mark.parametrize("T", [1, 10, 20])
def test_linear_refuses_too_few_steps(T: int) -> None:
    with pytest.raises(ValueError, match="linear schedule needs at least 21 steps"):
        schedules.linear(T)


def test_cosine_works_for_a_single_step() -> None:
    betas = schedules.cosine(1)
    assert betas.shape == (1,) and 0 < betas.item() <= 0.999
