"""Step specs, strided processes and the model adapter (docs/paper.md P14, P15)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from iddpm.diffusion import schedules
from iddpm.diffusion.gaussian import _TABLES, GaussianDiffusion, MeanType, VarType
from iddpm.diffusion.respace import (
    KARRAS_SIGMA_MAX,
    KARRAS_SIGMA_MIN,
    LOGSNR_CEILING,
    LOGSNR_FLOOR,
    ModelAdapter,
    format_steps,
    parse_steps,
    respace,
    spaced_model,
)


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


def test_trailing_spec_reaches_the_top_and_spaces_evenly_down_from_it() -> None:
    assert parse_steps("trailing10", 1000) == list(range(99, 1000, 100))
    assert parse_steps("trailing1", 1000) == [999]
    assert parse_steps("trailing1000", 1000) == list(range(1000))
    for T, K in [(1000, 30), (1000, 7), (4000, 50), (10, 3), (7, 7)]:
        kept = parse_steps(f"trailing{K}", T)
        assert len(kept) == K and kept[-1] == T - 1
        assert kept[0] == math.ceil(T / K) - 1  # T − 1 − ⌊(K − 1)T/K⌋
        gaps = {b - a for a, b in itertools.pairwise(kept)}
        assert gaps <= {T // K, math.ceil(T / K)}


def test_ddim_spacing_starts_below_noise_and_trailing_spacing_at_it() -> None:
    # With the cosine schedule the top of 'ddim10' (step 900) has ᾱ = 0.0236: the sampler
    # starts from pure noise at a level that is not pure noise. 'trailing10' starts at T − 1.
    abar = make("cosine", 1000).alphas_cumprod
    assert parse_steps("ddim10", 1000)[-1] == 900
    assert 0.023 < float(abar[900]) < 0.025
    assert parse_steps("trailing10", 1000)[-1] == 999
    assert float(abar[999]) < 1e-8


def _logsnr(d: GaussianDiffusion) -> torch.Tensor:
    return torch.log(d.alphas_cumprod) - torch.log1p(-d.alphas_cumprod)


def _targets(logsnr: torch.Tensor, K: int) -> torch.Tensor:
    high = min(float(logsnr[0]), LOGSNR_CEILING)
    return torch.linspace(high, max(float(logsnr[-1]), LOGSNR_FLOOR), K, dtype=torch.float64)


@pytest.mark.parametrize("K", [5, 10, 30])
def test_logsnr_spec_keeps_the_steps_nearest_to_uniform_log_snr(K: int) -> None:
    d = make("linear", 1000)
    kept = parse_steps(f"logsnr{K}", 1000, alphas_cumprod=d.alphas_cumprod)
    logsnr = _logsnr(d)
    targets = _targets(logsnr, K)
    assert len(kept) == K and all(b > a for a, b in itertools.pairwise(kept))
    # no two targets share a step here, so every kept step is its target's nearest step
    nearest = [int((logsnr - t).abs().argmin()) for t in targets]
    assert kept == nearest
    # uniformity: every kept log-SNR is within half a local step gap of its target
    for step, target in zip(kept, targets):
        gap = float((logsnr[max(step - 1, 0)] - logsnr[min(step + 1, 999)]).abs())
        assert abs(float(logsnr[step]) - float(target)) <= gap / 2 + 1e-12


def test_logsnr_spec_moves_colliding_targets_to_free_steps() -> None:
    # K = 400 on the linear schedule (steps 57 … 674 in range): some targets are closer
    # than the steps; a target whose nearest step is taken moves up to the next free step.
    d = make("linear", 1000)
    kept = parse_steps("logsnr400", 1000, alphas_cumprod=d.alphas_cumprod)
    nearest = [int((_logsnr(d) - t).abs().argmin()) for t in _targets(_logsnr(d), 400)]
    assert len(set(nearest)) < 400 and len(kept) == 400
    assert all(b > a for a, b in itertools.pairwise(kept))
    assert all(k >= n for k, n in zip(kept, nearest)) and kept[-1] == nearest[-1]


def test_logsnr_and_karras_stop_short_of_the_cosine_schedules_extreme_end() -> None:
    # The cosine schedule's clipped last β puts log-SNR −12.9 at step 998 and −19.8 at 999
    # (23% of the range in one step): uniform targets over the whole range crowd the top
    # (the old `logsnr5` kept 0, 161, 943, 998, 999 and every sampler scored FID 165–320 at
    # 5 calls). Both spacings now end at their floor / σ cap, below the crowded steps.
    d = make("cosine", 1000)
    logsnr = _logsnr(d)
    for K in (5, 10, 50):
        lo = parse_steps(f"logsnr{K}", 1000, alphas_cumprod=d.alphas_cumprod)
        ka = parse_steps(f"karras{K}", 1000, alphas_cumprod=d.alphas_cumprod)
        assert float(logsnr[lo[-1]]) == pytest.approx(LOGSNR_FLOOR, abs=0.5)
        sigma_top = math.exp(-0.5 * float(logsnr[ka[-1]]))
        assert sigma_top == pytest.approx(KARRAS_SIGMA_MAX, rel=0.1)
        assert len(lo) == len(ka) == K and lo[-1] < 998 and ka[-1] < 998
    # the longest spec that fits below the floor, and the next one refused in one line
    top = parse_steps("logsnr10", 1000, alphas_cumprod=d.alphas_cumprod)[-1]
    assert parse_steps(f"logsnr{top + 1}", 1000, alphas_cumprod=d.alphas_cumprod) == list(
        range(top + 1)
    )
    with pytest.raises(ValueError, match=f"use at most {top + 1} steps"):
        parse_steps(f"logsnr{top + 2}", 1000, alphas_cumprod=d.alphas_cumprod)


@pytest.mark.parametrize("K", [2, 5, 20])
def test_karras_spec_keeps_the_steps_nearest_to_karras_sigmas(K: int) -> None:
    # σ_i = (σ_max^{1/7} + i/(K−1)(σ_min^{1/7} − σ_max^{1/7}))^7 in σ = √((1 − ᾱ)/ᾱ),
    # each kept step the one of nearest log σ (no collisions at these K).
    d = make("cosine", 1000)
    kept = parse_steps(f"karras{K}", 1000, alphas_cumprod=d.alphas_cumprod)
    log_sigma = -0.5 * _logsnr(d)
    s_min = max(math.exp(float(log_sigma[0])), KARRAS_SIGMA_MIN)
    s_max = min(math.exp(float(log_sigma[-1])), KARRAS_SIGMA_MAX)
    ramp = torch.linspace(0, 1, K, dtype=torch.float64)
    sig = (s_min ** (1 / 7) + ramp * (s_max ** (1 / 7) - s_min ** (1 / 7))) ** 7
    nearest = [int((log_sigma - math.log(s)).abs().argmin()) for s in sig]
    assert kept == nearest


def test_spaced_model_passes_the_schedule_to_logsnr_specs() -> None:
    base = make("cosine", 1000)
    spaced, adapted = spaced_model(_echo_t, base, "logsnr20", rescale_timesteps=False)
    expected = parse_steps("logsnr20", 1000, alphas_cumprod=base.alphas_cumprod)
    assert spaced.num_timesteps == 20
    assert adapted(torch.zeros(20, 1), torch.arange(20)).tolist() == expected


@pytest.mark.parametrize(
    "kept",
    [
        [0],
        [999],
        [0, 5, 17, 999],
        list(range(0, 1000, 37)),
        parse_steps("logsnr25", 1000, alphas_cumprod=make("linear", 1000).alphas_cumprod),
    ],
)
def test_explicit_step_lists_round_trip(kept: list[int]) -> None:
    spec = format_steps(kept)
    assert spec.startswith("at:")
    assert parse_steps(spec, 1000) == kept
    assert parse_steps(f"  {spec} ", 1000) == kept


def test_explicit_step_list_tolerates_spaces_between_steps() -> None:
    assert parse_steps("at:0, 5 ,17", 20) == [0, 5, 17]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("trailing0", "asks for 0 steps; use 'trailingK' with K >= 1"),
        ("trailing101", "has only 100; use at most 'trailing100'"),
        ("trailingx", "non-integer count 'x'"),
        ("logsnr0", "asks for 0 steps; use 'logsnrK' with K >= 1"),
        ("logsnr101", "has only 100; use at most 'logsnr100'"),
        ("karras0", "asks for 0 steps; use 'karrasK' with K >= 1"),
        ("karras101", "has only 100; use at most 'karras100'"),
        ("karras100", "use at most"),
        ("at:", "lists no steps"),
        ("at:0,x", "non-integer step 'x'"),
        ("at:0,,5", "non-integer step ''"),
        ("at:0,100", "has step 100 outside [0, 100); list steps from 0 to 99"),
        ("at:-1,5", "has step -1 outside [0, 100)"),
        ("at:0,5,5", "repeats step 5; list each step once"),
        ("at:0,7,3", "is not increasing (7 before 3); list the steps in increasing order"),
        ("after:3", "unknown step spec 'after:3'"),
    ],
)
def test_bad_new_specs_raise_one_line_errors(spec: str, message: str) -> None:
    abar = make("cosine", 100).alphas_cumprod
    with pytest.raises(ValueError) as err:
        parse_steps(spec, 100, alphas_cumprod=abar)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_logsnr_spec_needs_a_finite_schedule_of_the_right_length() -> None:
    with pytest.raises(ValueError, match="needs the schedule's alphas_cumprod; pass"):
        parse_steps("logsnr10", 100)
    with pytest.raises(ValueError, match=r"shape \(50,\) but the process has 100 steps"):
        parse_steps("logsnr10", 100, alphas_cumprod=make("cosine", 50).alphas_cumprod)
    betas = torch.cat([torch.full((99,), 0.02, dtype=torch.float64), torch.ones(1)])
    with pytest.raises(ValueError, match="needs 0 < ᾱ < 1 at every step"):
        parse_steps("logsnr10", 100, alphas_cumprod=GaussianDiffusion(betas).alphas_cumprod)
    # the other formats do not need it
    assert len(parse_steps("trailing10", 100)) == 10


@pytest.mark.parametrize("steps", [[], [3, 1], [0, 2, 2], [-1, 4]])
def test_format_steps_rejects_lists_that_are_not_increasing_steps(steps: list[int]) -> None:
    with pytest.raises(ValueError, match="pass strictly increasing steps >= 0"):
        format_steps(steps)


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
