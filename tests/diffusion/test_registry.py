"""The contract every registered sampler meets (docs/design.md §2, docs/style.md 16).

Parametrised over `registry.names()`, so a sampler is checked the moment it is
registered: output shape and dtype, sample i depends only on (seed, i) (batch sizes 1, 4
and 16 give the same samples), determinism, and on the Gaussian oracle (x0 ~ N(mu, s²I),
exact ε) the data's mean and variance within a tolerance derived from the sample size.
Options a sampler needs from data (`metadata={"cli": False}`) come from its entry's
`from_data` function, run on images of the oracle's data.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import gaussian_oracle
from iddpm.diffusion import registry, schedules
from iddpm.diffusion.gaussian import GaussianDiffusion, VarType
from iddpm.diffusion.respace import parse_steps, respace
from iddpm.diffusion.samplers import per_sample_generators

MU, S = 0.3, 0.2
NAMES = registry.names()


def process(steps: str, var_type: VarType = VarType.LEARNED_RANGE) -> GaussianDiffusion:
    base = GaussianDiffusion(schedules.get("cosine", 1000), var_type=var_type)
    return respace(base, parse_steps(steps, 1000))[0]


def options_for(name: str, d: GaussianDiffusion, model_fn) -> object:
    """Default options, plus what the entry computes from data (on the oracle's data)."""
    entry = registry.get(name)
    if entry.from_data is None:
        return registry.make_options(name)
    x0 = MU + S * torch.randn(1024, 1, 2, 2, generator=torch.Generator().manual_seed(7))
    return entry.from_data(model_fn, d, x0)


def run(
    name: str,
    d: GaussianDiffusion,
    seed: int,
    indices: list[int],
    dtype: torch.dtype = torch.float32,
    per_sample: bool = True,
) -> torch.Tensor:
    """Samples `indices` of `seed`, one generator per sample (or one for the batch)."""
    gens = (
        per_sample_generators(seed, indices) if per_sample else torch.Generator().manual_seed(seed)
    )
    model_fn = gaussian_oracle(d, MU, S)
    return registry.sample(
        name,
        model_fn,
        d,
        options=options_for(name, d, model_fn),
        shape=(len(indices), 1, 2, 2),
        generator=gens,
        clip_denoised=False,
        dtype=dtype,
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_has_the_requested_shape_and_dtype(name: str, dtype: torch.dtype) -> None:
    x = run(name, process("10"), 0, [0, 1, 2], dtype)
    assert x.shape == (3, 1, 2, 2)
    assert x.dtype == dtype
    assert bool(torch.isfinite(x).all())


@pytest.mark.parametrize("name", NAMES)
def test_sample_i_depends_only_on_seed_and_i(name: str) -> None:
    d = process("10")
    whole = run(name, d, 3, list(range(16)))
    for batch in (1, 4):
        parts = [run(name, d, 3, list(range(lo, lo + batch))) for lo in range(0, 16, batch)]
        torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=0)
    assert not torch.equal(run(name, d, 4, list(range(16))), whole)  # the seed matters


@pytest.mark.parametrize("name", NAMES)
def test_sampling_is_deterministic(name: str) -> None:
    d = process("10")
    torch.testing.assert_close(run(name, d, 5, [0, 1]), run(name, d, 5, [0, 1]), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_moments_match_gaussian_data_at_many_steps(name: str) -> None:
    # 250 strided steps of a cosine T = 1000 process, 4096 samples of 4 dimensions each
    # (n = 16384 values; dimensions are independent under the oracle).
    # Systematic allowance on the variance: the chain starts from N(0, I) instead of
    # q(x_T) and its last step returns a mean, which loses Var[x0 | x at index 0]
    # = s²(1 − ᾱ_0)/(ᾱ_0 s² + 1 − ᾱ_0) (0.1% of s² here); a first-order solver adds a
    # discretisation error of about c/K of s², with c = 6.6 for DDIM η = 0 in closed form
    # (−12.4% at K = 50, −2.7% at K = 250; test_samplers.ddim_factor), so 10/K is allowed.
    K = 250
    d = process(str(K))
    x = run(name, d, 11, list(range(4096)), torch.float64, per_sample=False).flatten()
    n = x.numel()
    ab0 = float(d.alphas_cumprod[0])
    lost = S**2 * (1 - ab0) / (ab0 * S**2 + 1 - ab0)
    var_sys = lost + 10 / K * S**2
    tol_mean = 5 * math.sqrt(S**2 / n) + 0.01 * S
    tol_var = 5 * S**2 * math.sqrt(2 / (n - 1)) + var_sys
    assert abs(float(x.mean()) - MU) < tol_mean
    assert abs(float(x.var()) - S**2) < tol_var


def test_unknown_sampler_lists_the_registered_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown sampler 'euler'.*ancestral.*ddim"):
        registry.get("euler")


def test_an_option_of_another_sampler_is_refused() -> None:
    with pytest.raises(ValueError, match="--eta does not apply to sampler 'ancestral'"):
        registry.make_options("ancestral", {"eta": 0.5})


def test_options_are_typed_and_validated() -> None:
    assert registry.make_options("ddim", {"eta": "0.5"}).eta == 0.5
    with pytest.raises(ValueError, match=r"--eta 1\.5 is outside"):
        registry.make_options("ddim", {"eta": 1.5})
    with pytest.raises(ValueError, match="not a valid float"):
        registry.make_options("ddim", {"eta": "abc"})


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        registry.register("ddim", registry.get("ddim").steps, registry.DDIMOptions)


def test_cli_options_name_their_samplers() -> None:
    opts = registry.cli_options()
    assert opts["eta"][0] is float
    assert "ddim" in opts["eta"][2]
