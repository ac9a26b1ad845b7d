"""Sampler-optimal step schedules (iddpm.diffusion.step_costs) on the Gaussian oracle.

The oracle's probability-flow ODE has a closed form, but the costs only need a fine
reference solve; on a T = 120 cosine process every base step is a candidate, so even,
trailing, log-SNR and Karras spacings are all paths the DP could choose.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from conftest import gaussian_oracle
from iddpm.diffusion import registry, schedules
from iddpm.diffusion.gaussian import GaussianDiffusion, VarType
from iddpm.diffusion.respace import parse_steps, respace
from iddpm.diffusion.samplers import Denoiser
from iddpm.diffusion.step_costs import (
    StepCosts,
    brute_force_path,
    optimal_path,
    path_error,
    reference_states,
    step_costs,
)

T = 120
MU, S = 0.3, 0.5


@functools.cache
def base() -> GaussianDiffusion:
    return GaussianDiffusion(schedules.get("cosine", T), var_type=VarType.LEARNED_RANGE)


X_T = torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@functools.cache
def costs(form: str) -> StepCosts:
    d = base()
    return step_costs(gaussian_oracle(d, MU, S), d, list(range(T)), X_T, form, refine=1,
                      clip_denoised=False)  # fmt: skip


@functools.cache
def reference() -> tuple[list[torch.Tensor], torch.Tensor]:
    d = base()
    return reference_states(gaussian_oracle(d, MU, S), d, list(range(T)), X_T, 1, False)


def trajectory_error(sampler: str, steps: list[int]) -> float:
    """Mean squared error per dimension of `sampler` run on `steps` from X_T, against the
    fine reference sample."""
    d = base()
    final = reference()[1]
    spaced = respace(d, steps)[0]
    x = registry.sample(sampler, gaussian_oracle(spaced, MU, S), spaced, noise=X_T,
                        clip_denoised=False)  # fmt: skip
    return float((x - final).pow(2).mean())


def random_costs(n: int, seed: int) -> StepCosts:
    g = torch.Generator().manual_seed(seed)
    local = torch.rand(n, n, generator=g, dtype=torch.float64).tril(-1)
    local = torch.where(local > 0, local, torch.full_like(local, math.inf))
    return StepCosts(list(range(n)), local, torch.rand(n, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_dp_equals_brute_force(k: int) -> None:
    for seed in range(3):
        c = random_costs(9, seed)
        path, e = optimal_path(c, k)
        bpath, be = brute_force_path(c, k)
        assert path == bpath and abs(e - be) < 1e-12, (seed, path, bpath)
        assert abs(path_error(c, path) - e) < 1e-12 and path[-1] == 8 and len(path) == k


def test_dp_equals_brute_force_on_the_oracle_costs() -> None:
    c = costs("euler")
    small = StepCosts([*c.steps[::20], T - 1], *_sub(c, [*list(range(0, T, 20)), T - 1]))
    for k in (2, 3, 4):
        path, e = optimal_path(small, k)
        assert (path, e) == (brute_force_path(small, k)[0], pytest.approx(e)), k
        assert abs(brute_force_path(small, k)[1] - e) < 1e-15


def _sub(c: StepCosts, keep: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.tensor(keep)
    return c.local[idx][:, idx], c.final[idx]


@pytest.mark.parametrize("form, sampler", [("euler", "ddim"), ("trapezoid", "heun")])
def test_the_optimal_schedule_beats_the_fixed_spacings(form: str, sampler: str) -> None:
    # The DP minimises the summed local errors E over paths that start at the top; every
    # K-step spacing is such a path (the capped log-SNR and Karras spacings start a step or
    # two lower: moved to the same start), so E(optimal) <= E(spacing). The sampler's own
    # global error on the optimal schedule is also the smallest of the five (K = 4).
    c = costs(form)
    k = 4
    path, e = optimal_path(c, k)
    best = [c.steps[i] for i in path]
    abar = base().alphas_cumprod
    mine = trajectory_error(sampler, best)
    for spec in (str(k), f"trailing{k}", f"logsnr{k}", f"karras{k}"):
        steps = parse_steps(spec, T, alphas_cumprod=abar)
        steps[-1] = T - 1
        assert e <= path_error(c, steps), (spec, steps, best)
        assert mine <= trajectory_error(sampler, steps), (spec, steps, best)


def test_a_local_cost_is_one_step_of_the_form_from_the_reference() -> None:
    # c[j, i] by hand for the Euler (DDIM) step from the reference state at j to level i.
    d, c = base(), costs("euler")
    ref = reference()[0]
    j, i = 90, 40
    spaced = respace(d, [i, j])[0]
    denoise = Denoiser(gaussian_oracle(spaced, MU, S), spaced, clip_denoised=False)
    x_i = next(iter(registry.get("ddim").steps(denoise, ref[j], None))).x
    assert abs(float((x_i - ref[i]).pow(2).mean()) - float(c.local[j, i])) < 1e-15
    assert math.isinf(c.local[i, j])


def test_a_cost_table_that_does_not_fit_is_refused() -> None:
    c = random_costs(4, 0)
    with pytest.raises(ValueError, match="do not fit"):
        StepCosts(c.steps, c.local[:3], c.final).check()
    with pytest.raises(ValueError, match="choose an integer K in"):
        optimal_path(c, 5)
