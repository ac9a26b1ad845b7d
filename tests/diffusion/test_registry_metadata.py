"""What the registry knows about each sampler (label, bound, statistics, ODE, calls) is
consistent and true: an `ode` sampler is deterministic given x_T, a bound's Σ exists, the
statistics a sampler names are the ones its options receive."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import gaussian_oracle
from iddpm.diffusion import registry, schedules
from iddpm.diffusion.gaussian import GaussianDiffusion
from iddpm.diffusion.respace import parse_steps, respace
from iddpm.diffusion.samplers import per_sample_generators

NAMES = registry.names()


@pytest.mark.parametrize("name", NAMES)
def test_every_entry_says_what_it_is(name: str) -> None:
    e = registry.get(name)
    assert e.label and isinstance(e.ode, bool)
    assert e.bound_sigma is None or e.bound_sigma in registry.SIGMAS
    assert set(e.statistics) <= set(registry.STATISTICS)
    assert all(e.calls(k) >= k for k in (1, 5, 50))
    fed = {f.metadata.get("statistic") for f in dataclasses.fields(e.options)} - {None}
    assert fed == set(e.statistics) and (e.from_data is None) == (not e.statistics)


@pytest.mark.parametrize("name", [n for n in NAMES if registry.get(n).ode])
def test_an_ode_sampler_is_deterministic_given_x_T(name: str) -> None:
    base = GaussianDiffusion(schedules.get("cosine", 200))
    d = respace(base, parse_steps("8", 200))[0]
    model_fn = gaussian_oracle(d, 0.3, 0.2)
    x_t = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    a, b = (
        registry.sample(name, model_fn, d, noise=x_t, generator=per_sample_generators(s, [0, 1, 2]))
        for s in (1, 2)
    )
    assert torch.equal(a, b)


def test_a_stochastic_sampler_is_not_marked_ode() -> None:
    base = GaussianDiffusion(schedules.get("cosine", 200))
    d = respace(base, parse_steps("8", 200))[0]
    model_fn = gaussian_oracle(d, 0.3, 0.2)
    x_t = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    a, b = (
        registry.sample(
            "ancestral", model_fn, d, noise=x_t, generator=per_sample_generators(s, [0, 1, 2])
        )
        for s in (1, 2)
    )
    assert not registry.get("ancestral").ode and not torch.equal(a, b)


def test_the_bounds_the_sweep_reports() -> None:
    entries = [registry.get(n) for n in NAMES]
    assert all(e.bound_sigma is None for e in entries if e.ode)  # an ODE has no K-step bound
    assert (registry.get("ancestral").bound_sigma, registry.get("analytic").bound_sigma) == (
        "model",
        "analytic",
    )
    assert registry.SIGMAS["analytic"].statistics == ("gamma",)


def test_with_statistics_fills_the_field_that_receives_each() -> None:
    opts = registry.with_statistics(
        "analytic", registry.make_options("analytic"), {"gamma": torch.ones(3)}
    )
    assert opts.eps_moments == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="needs the statistics"):
        registry.with_statistics("analytic", opts, {})


def test_register_refuses_inconsistent_metadata() -> None:
    steps = registry.get("ancestral").steps
    with pytest.raises(ValueError, match="bound_sigma"):
        registry.register("x-bad-sigma", steps, bound_sigma="learned")
    with pytest.raises(ValueError, match="unknown statistics"):
        registry.register("x-bad-stat", steps, statistics=("delta",))
    with pytest.raises(ValueError, match="marked with a statistic"):
        registry.register("x-unfed", steps, statistics=("gamma",))  # NoOptions has no field
    assert "x-bad-sigma" not in registry.names() and "x-unfed" not in registry.names()
