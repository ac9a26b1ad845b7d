"""Bound-optimal step schedules (diffusion/step_schedule.py) on oracle models.

Data: every dimension uniform on four uint8 levels, with the exact denoiser of conftest
(`discrete_oracle`, built against the unstrided base process: a strided process sees it
through the timestep map, as a trained network). What is proved:
1. the cost of any path equals `bits_per_dim` of the strided process that keeps those
   steps, within Monte-Carlo error (both are means over the same images of one noise draw
   per kept step, so the difference has standard error √2 times that of the bound), for
   every variance type and for Analytic-DPM variances;
   and exactly (to float rounding) for the path of all steps, whose noise is the same
   as `bits_per_dim`'s with the same seed; the jump and decoder variances are those
   `respace` builds;
2. the dynamic programme finds exactly the brute-force optimum over all K-subsets.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from conftest import discrete_oracle
from iddpm.diffusion import schedules
from iddpm.diffusion.analytic import analytic_variance, estimate_eps_moments
from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType, VarType
from iddpm.diffusion.likelihood import bits_per_dim
from iddpm.diffusion.respace import ModelAdapter, parse_steps, respace
from iddpm.diffusion.samplers import per_sample_generators
from iddpm.diffusion.step_schedule import (
    BoundCosts,
    bound_cost_matrix,
    optimal_steps,
    path_cost,
)

LEVELS = torch.tensor([0, 85, 170, 255], dtype=torch.float64) / 127.5 - 1.0
Z = 5.0


def base(num_t: int, var_type: VarType, mean_type: MeanType = MeanType.EPSILON):
    return GaussianDiffusion(schedules.get("cosine", num_t), mean_type, var_type)


def images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return LEVELS[torch.randint(0, 4, (n, 1, 2, 2), generator=g)]


def strided_bound(d, model, x0, kept, gamma=None) -> torch.Tensor:
    """Per-image bits/dim of the strided process keeping `kept` (Analytic-DPM with Γ)."""
    sd, tmap = respace(d, kept)
    if gamma is not None:
        sd = sd.with_reverse_variance(analytic_variance(sd, gamma[tmap]))
    gens = per_sample_generators(11, range(len(x0)))
    return bits_per_dim(
        ModelAdapter(model, tmap), sd, x0, generator=gens, timestep_batch=64
    ).total_bpd


VARIANTS = [
    (VarType.FIXED_SMALL, False),
    (VarType.FIXED_LARGE, False),
    (VarType.LEARNED_RANGE, False),
    (VarType.LEARNED, False),
    (VarType.FIXED_SMALL, True),  # Analytic-DPM
]


@pytest.mark.parametrize("var_type,analytic", VARIANTS)
def test_path_costs_equal_the_strided_bound(var_type: VarType, analytic: bool) -> None:
    num_t = 40
    d = base(num_t, var_type)
    model = discrete_oracle(d, LEVELS)
    x0 = images(300, 1)
    gamma = estimate_eps_moments(model, d, images(400, 2), seed=3) if analytic else None
    costs = bound_cost_matrix(model, d, x0, seed=4, eps_moments=gamma, timestep_batch=40)
    assert costs.num_images == 300 and costs.kl.shape == (num_t, num_t)
    dp_steps, dp_bound = optimal_steps(costs, 5)
    for kept in (parse_steps("5", num_t), dp_steps, list(range(num_t)), [3]):
        bpd = strided_bound(d, model, x0, kept, gamma)
        se = float(bpd.std()) / math.sqrt(len(bpd))
        got = path_cost(costs, kept)
        assert abs(got - float(bpd.mean())) <= Z * math.sqrt(2) * se + 1e-9, (kept, got, bpd.mean())
    assert dp_bound == path_cost(costs, dp_steps)


@pytest.mark.parametrize("var_type,analytic", VARIANTS)
def test_the_path_of_all_steps_is_bits_per_dim_of_the_base_process(var_type, analytic) -> None:
    # Image i's noise at base step t comes from (seed, i, t) in both: the same x_t draws.
    num_t = 30
    d = base(num_t, var_type)
    model = discrete_oracle(d, LEVELS)
    x0 = images(20, 12)
    gamma = estimate_eps_moments(model, d, images(50, 13)) if analytic else None
    costs = bound_cost_matrix(model, d, x0, seed=14, eps_moments=gamma, batch_size=7)
    full = d.with_reverse_variance(analytic_variance(d, gamma)) if analytic else d
    gens = per_sample_generators(14, range(len(x0)))
    bpd = bits_per_dim(model, full, x0, generator=gens, timestep_batch=9).total_bpd
    assert path_cost(costs, range(num_t)) == pytest.approx(float(bpd.mean()), rel=1e-9)


def test_jump_and_decoder_variances_are_those_of_the_strided_process() -> None:
    from iddpm.diffusion.step_schedule import _decoder_log_var_min, _jump_tables

    d = base(200, VarType.FIXED_SMALL)
    for s, t, u in [(0, 1, 2), (0, 57, 199), (3, 4, 150), (40, 120, 121)]:
        sd, _ = respace(d, [s, t, u])
        log_beta, log_tilde, coef1 = (v[s] for v in _jump_tables(d.alphas_cumprod, t))
        torch.testing.assert_close(log_beta.exp(), sd.betas[1], rtol=1e-12, atol=0)
        torch.testing.assert_close(
            log_tilde, torch.log(sd.posterior_variance[1]), rtol=1e-12, atol=0
        )
        torch.testing.assert_close(coef1, sd.posterior_mean_coef1[1], rtol=1e-12, atol=0)
        # the decoder at s with next kept step t: the strided process's first log-variance
        dec = _decoder_log_var_min(d.alphas_cumprod, s)
        torch.testing.assert_close(
            dec[t - s], sd.posterior_log_variance_clipped[0], rtol=1e-12, atol=0
        )
        alone, _ = respace(d, [s])
        torch.testing.assert_close(
            dec[0], alone.posterior_log_variance_clipped[0], rtol=1e-12, atol=0
        )


@pytest.mark.parametrize("var_type", [VarType.FIXED_LARGE, VarType.LEARNED_RANGE])
def test_dynamic_programme_equals_brute_force_over_all_subsets(var_type: VarType) -> None:
    num_t = 12
    d = base(num_t, var_type)
    costs = bound_cost_matrix(discrete_oracle(d, LEVELS), d, images(64, 5), seed=6)
    for k in (1, 2, 3, 4, num_t):
        steps, bound = optimal_steps(costs, k)
        brute = min((path_cost(costs, c), list(c)) for c in itertools.combinations(range(num_t), k))
        assert bound == brute[0] and steps == brute[1], (k, steps, brute)
        even = path_cost(costs, parse_steps(str(k), num_t))
        assert bound <= even
    # the optimum is not the even spacing here, so the search does something
    assert optimal_steps(costs, 3)[0] != parse_steps("3", num_t)


def test_decoder_steps_restricts_where_the_path_may_end() -> None:
    d = base(12, VarType.FIXED_LARGE)
    costs = bound_cost_matrix(discrete_oracle(d, LEVELS), d, images(16, 7), decoder_steps=1)
    assert torch.isinf(costs.decoder[:, 1:]).all() and torch.isfinite(costs.decoder[:, 0]).all()
    for k in (1, 3):
        assert optimal_steps(costs, k)[0][0] == 0
    assert math.isinf(path_cost(costs, [2, 5]))


def test_cost_matrices_have_the_documented_shape_and_infinities() -> None:
    d = base(6, VarType.LEARNED_RANGE)
    costs = bound_cost_matrix(discrete_oracle(d, LEVELS), d, images(8, 8), batch_size=3)
    lower = torch.ones(6, 6, dtype=torch.bool).tril(-1)
    assert torch.isfinite(costs.kl[lower]).all() and torch.isinf(costs.kl[~lower]).all()
    assert torch.isfinite(costs.decoder[lower | torch.eye(6, dtype=torch.bool)]).all()
    assert (costs.kl[lower] >= 0).all() and (costs.prior > 0).all()
    assert costs.prior[-1] < costs.prior[0]  # the prior term shrinks towards noise


def _costs(num_t: int = 5) -> BoundCosts:
    inf = torch.full((num_t, num_t), math.inf, dtype=torch.float64)
    return BoundCosts(inf, inf, torch.zeros(num_t, dtype=torch.float64), 1)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: optimal_steps(_costs(), 0), r"K = 0 steps: choose an integer K in \[1, 5\]"),
        (lambda: optimal_steps(_costs(), 6), r"K = 6 steps: choose an integer K in \[1, 5\]"),
        (lambda: optimal_steps(_costs(), 2), "no 2-step path has a finite cost"),
        (lambda: path_cost(_costs(), [3, 2]), "strictly increasing list in"),
        (lambda: path_cost(_costs(), [0, 5]), r"in \[0, 5\)"),
    ],
)
def test_bad_schedule_requests_are_one_line_errors(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mean_type": MeanType.PREV_MEAN}, "prev-mean model predicts one step's mean"),
        ({"eps_moments": torch.ones(5)}, "eps_moments has 5 entries but the base process has 6"),
        ({"decoder_steps": 0}, r"decoder_steps must be in \[1, 6\]"),
        ({"x0": torch.full((2, 1, 2, 2), 0.5)}, "not on the uint8 grid"),
    ],
)
def test_bad_cost_matrix_inputs_are_one_line_errors(kwargs, match) -> None:
    d = base(6, VarType.FIXED_SMALL, kwargs.pop("mean_type", MeanType.EPSILON))
    x0 = kwargs.pop("x0", images(2, 9))
    with pytest.raises(ValueError, match=match):
        bound_cost_matrix(discrete_oracle(d, LEVELS), d, x0, **kwargs)
