"""Step specs, strided processes and the model adapter (PAPER.md P14, P15)."""

from __future__ import annotations

import itertools

import pytest
import torch

from iddpm.diffusion import schedules
from iddpm.diffusion.gaussian import _TABLES, GaussianDiffusion, MeanType, VarType
from iddpm.diffusion.respace import ModelAdapter, parse_steps, respace, spaced_model


def make(schedule: str = "cosine", T: int = 1000, **kw) -> GaussianDiffusion:
    return GaussianDiffusion(schedules.get(schedule, T), **kw)


# ---------------------------------------------------------------------- parse_steps
@pytest.mark.parametrize("spec", [None, "", "  ", "1000"])
def test_empty_spec_or_full_count_keeps_every_step(spec: str | None) -> None:
    assert parse_steps(spec, 1000) == list(range(1000))


def test_single_count_spreads_a_real_stride_and_keeps_both_ends() -> None:
    # stride (100 − 1)/(10 − 1) = 11 exactly.
    assert parse_steps("10", 100) == list(range(0, 100, 11))
    # stride 999/49 = 20.387…: positions k·20.387 rounded; gaps are 20 or 21.
    kept = parse_steps("50", 1000)
    assert len(kept) == 50 and kept[0] == 0 and kept[-1] == 999
    assert kept == [round(k * 999 / 49) for k in range(50)]
    assert {b - a for a, b in itertools.pairwise(kept)} == {20, 21}


def test_one_step_keeps_the_first_step() -> None:
    assert parse_steps("1", 1000) == [0]


def test_section_counts_space_each_section_separately() -> None:
    # T = 10 in two sections of 5: [0, 5) with 3 steps (stride 2), [5, 10) with 4 (stride 4/3).
    assert parse_steps("3,4", 10) == [0, 2, 4, 5, 6, 8, 9]
    # T = 10 in three sections: sizes 4, 3, 3 (the first gets the remainder).
    assert parse_steps("4,1,3", 10) == [0, 1, 2, 3, 4, 7, 8, 9]
    # 45 steps from 1000 in sections of 334, 333 and 333 steps.
    kept = parse_steps("10,15,20", 1000)
    assert len(kept) == 45
    assert kept[:10] == [round(k * 333 / 9) for k in range(10)]
    assert kept[10] == 334 and kept[24] == 334 + 332 and kept[25] == 667 and kept[-1] == 999


def test_ddim_spec_uses_an_integer_stride() -> None:
    assert parse_steps("ddim50", 1000) == list(range(0, 1000, 20))
    assert parse_steps("ddim1000", 1000) == list(range(1000))
    assert parse_steps("ddim1", 1000) == [0]
    assert parse_steps("ddim3", 7) == [0, 3, 6]


@pytest.mark.parametrize(
    "spec, T, message",
    [
        ("1.5", 100, "non-integer count '1.5'"),
        ("10,x", 100, "non-integer count 'x'"),
        ("10,,5", 100, "non-integer count ''"),
        ("ddimx", 100, "non-integer count 'x'"),
        ("0", 100, "section 0 asks for 0 steps"),
        ("5,-2", 100, "section 1 asks for -2 steps"),
        ("ddim0", 100, "asks for 0 steps; use 'ddimK' with K >= 1"),
        ("101", 100, "section 0 has 100 steps but asks for 101"),
        ("10,60", 100, "section 1 has 50 steps but asks for 60"),
        ("ddim101", 100, "has only 100; use at most 'ddim100'"),
        ("1,1,1", 2, "has 3 sections but the process has only 2 steps"),
        ("fast", 100, "unknown step spec 'fast'"),
        ("T", 100, "unknown step spec 'T'"),
    ],
)
def test_bad_specs_raise_one_line_errors(spec: str, T: int, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_steps(spec, T)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_impossible_ddim_count_reports_the_reachable_counts() -> None:
    # Strides 3 and 4 on T = 1000 give 334 and 250 steps; nothing gives 300.
    with pytest.raises(ValueError) as err:
        parse_steps("ddim300", 1000)
    msg = str(err.value)
    assert "exactly 300 of 1000" in msg
    assert "334 (stride 3) or 250 (stride 4)" in msg


def test_bad_number_of_steps_is_rejected() -> None:
    with pytest.raises(ValueError, match="integer >= 1, got 0"):
        parse_steps("10", 0)


# ---------------------------------------------------------------------- respace
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_keeping_every_step_reproduces_the_base_tables_exactly(schedule: str) -> None:
    base = make(schedule, 200)
    spaced, tmap = respace(base, parse_steps("", 200))
    assert torch.equal(tmap, torch.arange(200))
    for name in _TABLES:
        assert torch.equal(getattr(spaced, name), getattr(base, name)), name


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("spec", ["50", "ddim50", "10,15,20", "1", "3,497"])
def test_kept_alphas_cumprod_equal_the_base_ones(schedule: str, spec: str) -> None:
    base = make(schedule, 1000)
    kept = parse_steps(spec, 1000)
    spaced, tmap = respace(base, kept)
    assert tmap.dtype == torch.int64 and tmap.tolist() == kept
    assert spaced.num_timesteps == len(kept)
    # ᾱ is rebuilt as ∏(1 − β_i): forming 1 − β_i from β_i = 1 − ratio loses up to
    # ~1/(1 − β_i) ulps of relative precision per step (the cosine tail has β near 0.999).
    ulp = torch.finfo(torch.float64).eps
    rtol = float((4 * ulp / (1 - spaced.betas)).sum())
    torch.testing.assert_close(spaced.alphas_cumprod, base.alphas_cumprod[tmap], rtol=rtol, atol=0)
    # β_i = 1 − ᾱ_{S_i}/ᾱ_{S_{i−1}}, ᾱ_{S_{−1}} = 1 (P14).
    abar = base.alphas_cumprod[tmap]
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    torch.testing.assert_close(spaced.betas, 1 - abar / prev, rtol=1e-10, atol=1e-15)


def test_respaced_posterior_variance_follows_the_respaced_betas() -> None:
    # β̃_i = β_i (1 − ᾱ_{S_{i−1}})/(1 − ᾱ_{S_i}), computed from the base ᾱ directly.
    base = make("linear", 1000)
    spaced, tmap = respace(base, parse_steps("ddim50", 1000))
    abar = base.alphas_cumprod[tmap]
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    beta = 1 - abar / prev
    torch.testing.assert_close(spaced.posterior_variance, beta * (1 - prev) / (1 - abar))
    # The strided process is coarser: every kept β exceeds the base β at that step.
    assert bool((spaced.betas[1:] > base.betas[tmap[1:]]).all())


@pytest.mark.parametrize("mean_type", list(MeanType))
@pytest.mark.parametrize("var_type", list(VarType))
def test_respace_keeps_mean_and_variance_types(mean_type: MeanType, var_type: VarType) -> None:
    base = make("cosine", 100, mean_type=mean_type, var_type=var_type)
    spaced, _ = respace(base, [0, 10, 99])
    assert spaced.mean_type is mean_type and spaced.var_type is var_type


@pytest.mark.parametrize(
    "steps, message",
    [
        ([], "no steps to keep"),
        ([0, 5, 5], "strictly increasing"),
        ([3, 1], "strictly increasing"),
        ([0, 100], "must lie in [0, 100), got [0, 100]"),
        ([-1, 4], "must lie in [0, 100), got [-1, 4]"),
    ],
)
def test_respace_rejects_bad_step_lists(steps: list[int], message: str) -> None:
    with pytest.raises(ValueError) as err:
        respace(make("cosine", 100), steps)
    assert message in str(err.value)


# ---------------------------------------------------------------------- adapter
def _echo_t(x: torch.Tensor, t: torch.Tensor, **cond: object) -> torch.Tensor:
    return t


def test_adapter_maps_indices_to_original_steps_and_rescales() -> None:
    base = make("cosine", 4000)
    spaced, adapted = spaced_model(_echo_t, base, "ddim40", rescale_timesteps=True)
    t = torch.tensor([0, 1, 39])
    seen = adapted(torch.zeros(3, 1), t)
    # Original steps 0, 100, 3900, scaled by 1000/4000 into [0, 1000).
    assert seen.dtype == torch.float32
    torch.testing.assert_close(seen, torch.tensor([0.0, 25.0, 975.0]))
    assert spaced.num_timesteps == 40


def test_adapter_without_rescaling_passes_int_original_steps() -> None:
    base = make("linear", 1000)
    _, adapted = spaced_model(_echo_t, base, [0, 500, 999], rescale_timesteps=False)
    seen = adapted(torch.zeros(2, 1), torch.tensor([2, 1]))
    assert seen.dtype == torch.int64 and seen.tolist() == [999, 500]
    plain = ModelAdapter(_echo_t)
    assert plain(torch.zeros(1), torch.tensor([7])).tolist() == [7]


def test_adapter_passes_conditioning_through() -> None:
    def model(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y

    adapted = ModelAdapter(model, torch.tensor([0, 10]), scale=1.0)
    assert adapted(torch.zeros(1), torch.tensor([1]), y=torch.tensor([3])).tolist() == [3]
