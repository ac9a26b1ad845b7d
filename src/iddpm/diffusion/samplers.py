"""Samplers: one loop generator per family, all sharing one contract (docs/paper.md P6–P8, P15).

The loop contract (`SamplerLoop`), in the spirit of EDM's samplers:

    loop(denoise: Denoiser, x: x_T [N, C, H, W], noise: NoiseSource, **options)
        -> Iterator[SamplerStep]

`denoise(x, t)` is one network call at process index t (with clipping and the model's
keywords bound in), `noise(x)` fresh N(0, I) noise like x from the per-sample generators.
`start` builds the three from the shared keywords (shape or noise, generator,
clip_denoised, model_kwargs, device, dtype), the one place they are spelled out; `drive`
runs a loop from those keywords (`ancestral_steps`, `ddim_steps` and the solvers' `*_steps`
are such shorthands).

- `ancestral_steps`: p_θ(x_{t−1} | x_t) = N(μ_θ, Σ_θ), fixed or learned Σ (P6–P8).
- `ddim_steps`: DDIM(η) of Song et al. 2021 (P15); η = 0 is deterministic.
- `ddim_reverse_steps`: the η = 0 DDIM ODE run forwards in time, encoding x0 to the
  latent at index T−1 that `ddim_steps` starts from.

Each generator yields a `SamplerStep` per step, from t = T−1 down to 0 (up for the
reverse), where T is the number of steps of the `diffusion` passed in, which may be a
strided process from `respace` (wrap the network in `ModelAdapter` so it sees the original
steps). `ancestral`, `ddim` and `ddim_reverse` run the same loops and return the last x;
their `callback(step)` sees every step (progress bars, x̂0 previews, "progressive" output).

Randomness: `generator` is one `torch.Generator` for the whole batch, or one generator per
sample. With one per sample, sample i's initial noise and all its step noise come from
generator i alone, so sample i is a function of its own seed whatever batch it is drawn
in (`per_sample_generators` derives them from (seed, global index)). Noise is drawn on
the generator's device and then moved, so a CPU generator also drives a GPU run.

The loops run without autograd (each step is computed under `torch.no_grad`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from iddpm._tensor import broadcast_at
from iddpm.diffusion.gaussian import GaussianDiffusion, PMeanVar

ModelFn = Callable[..., torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class SamplerStep:
    """One step of a sampler: t is the process index just used (int), x the new sample
    [N, C, H, W] in the sample dtype, pred_x0 the model's (clipped) x̂0 at that step."""

    t: int
    x: torch.Tensor
    pred_x0: torch.Tensor


# ---------------------------------------------------------------------- randomness
def per_sample_generators(
    seed: int, indices: Sequence[int], device: torch.device | str = "cpu"
) -> list[torch.Generator]:
    """One independent generator per global sample index, seeded from (seed, index).

    The seeds come from numpy's SeedSequence hash of (seed, index), so nearby seeds or
    indices do not give correlated streams. seed, indices: non-negative ints.
    """
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}; pass a non-negative integer")
    gens = []
    for i in indices:
        if int(i) < 0:
            raise ValueError(f"sample indices must be >= 0, got {i}; pass global sample numbers")
        state = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(i),))
        word = int(state.generate_state(1, dtype=np.uint64)[0]) & (2**63 - 1)
        gens.append(torch.Generator(device=device).manual_seed(word))
    return gens


def _randn(
    shape: Sequence[int],
    generator: Generators,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Standard normal noise of `shape` ([N, ...]); with a list, row i from generator i."""
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        z = torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype)
        return z.to(device)
    if len(generator) != shape[0]:
        raise ValueError(
            f"got {len(generator)} generators for a batch of {shape[0]}; "
            "pass one generator per sample (see per_sample_generators)"
        )
    rows = [
        torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype).to(device)
        for g in generator
    ]
    return torch.stack(rows)


def initial_noise(
    shape: Sequence[int] | None,
    noise: torch.Tensor | None,
    generator: Generators,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """The starting x_T of a sampler: `noise` itself (moved to device/dtype), or standard
    normal noise of `shape` drawn from `generator` (one per sample: row i from generator
    i). Defaults: cpu and float32."""
    if noise is None and shape is None:
        raise ValueError("pass either noise= (the starting x_T) or shape= (to draw it)")
    if noise is not None:
        if shape is not None and tuple(shape) != tuple(noise.shape):
            raise ValueError(
                f"shape {tuple(shape)} does not match noise of shape {tuple(noise.shape)}; "
                "pass only one of them"
            )
        return noise.to(device=device or noise.device, dtype=dtype or noise.dtype)
    assert shape is not None
    dev = torch.device(device or "cpu")
    return _randn(shape, generator, dev, dtype or torch.float32)


def _timesteps(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)


@torch.no_grad()
def model_step(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    x: torch.Tensor,
    t: int,
    clip_denoised: bool,
    model_kwargs: Mapping[str, Any] | None,
) -> PMeanVar:
    """One network call at process index t (an int, for the whole batch) and the reverse
    step's mean, variance and x̂0 it implies (P6–P8), without autograd."""
    tt = _timesteps(t, x)
    out = model_fn(x, tt, **(model_kwargs or {}))
    return diffusion.p_mean_variance(out, x, tt, clip_denoised=clip_denoised)


# ---------------------------------------------------------------------- the loop contract
@dataclass(frozen=True)
class Denoiser:
    """The network as a sampler loop sees it: `denoise(x, t)` is one network call at
    process index t (an int, for the whole batch) and the reverse step it implies (mean,
    variance, x̂0, ε̂ as a `PMeanVar`), with x̂0 clipped to [−1, 1] when `clip_denoised`.
    `diffusion` is the process the loop runs (its tables give ᾱ, λ, σ of every index)."""

    model_fn: ModelFn
    diffusion: GaussianDiffusion
    clip_denoised: bool = True
    model_kwargs: Mapping[str, Any] | None = None

    def __call__(self, x: torch.Tensor, t: int) -> PMeanVar:
        return model_step(
            self.model_fn, self.diffusion, x, t, self.clip_denoised, self.model_kwargs
        )

    def on(self, diffusion: GaussianDiffusion) -> Denoiser:
        """The same network read through another process's tables (e.g. another Σ)."""
        return dataclasses.replace(self, diffusion=diffusion)


@dataclass(frozen=True)
class NoiseSource:
    """Fresh standard normal noise for a loop: `noise(x)` is shaped like x (its device and
    dtype), row i drawn from generator i when there is one generator per sample."""

    generator: Generators = None

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        return _randn(like.shape, self.generator, like.device, like.dtype)


# A sampler loop: loop(denoise: Denoiser, x: x_T [N, C, H, W], noise: NoiseSource,
# **options) -> Iterator[SamplerStep]. The registry builds its three arguments with `start`.
SamplerLoop = Callable[..., Iterator[SamplerStep]]


def start(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    *,
    shape: Sequence[int] | None = None,
    noise: torch.Tensor | None = None,
    generator: Generators = None,
    clip_denoised: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Denoiser, torch.Tensor, NoiseSource]:
    """The arguments of a sampler loop from the shared keywords (the one place they are
    spelled out): the denoiser, x_T and the noise source of the later steps.

    noise: the starting x_T [N, C, H, W] (else drawn with `shape` from `generator`, before
    any step noise); generator: one `torch.Generator` for the batch or one per sample
    (`per_sample_generators`); device, dtype: of the sample (default: those of `noise`, else
    cpu and float32); clip_denoised, model_kwargs: see `Denoiser`.
    """
    x = initial_noise(shape, noise, generator, device, dtype)
    return Denoiser(model_fn, diffusion, clip_denoised, model_kwargs), x, NoiseSource(generator)


_START_KEYWORDS = frozenset(inspect.signature(start).parameters) - {"model_fn", "diffusion"}


def drive(
    loop: SamplerLoop, model_fn: ModelFn, diffusion: GaussianDiffusion, **kwargs: Any
) -> Iterator[SamplerStep]:
    """Run a sampler loop from the shared keywords of `start` plus the loop's own options
    (e.g. `drive(ddim_loop, model_fn, d, shape=..., generator=g, eta=0.5)`)."""
    options = {k: v for k, v in kwargs.items() if k not in _START_KEYWORDS}
    common = {k: v for k, v in kwargs.items() if k in _START_KEYWORDS}
    return loop(*start(model_fn, diffusion, **common), **options)


# ---------------------------------------------------------------------- ancestral
def ancestral_loop(denoise: Denoiser, x: torch.Tensor, noise: NoiseSource) -> Iterator[SamplerStep]:
    """(P6–P8) Ancestral sampling x_{t−1} = μ_θ(x_t, t) + exp(½ log Σ_θ)·z, t = T−1 … 0.

    No noise is added at t = 0, so the last x is μ_θ(x_1, 0). Works for every mean and
    variance type through `diffusion.p_mean_variance` (a learned-Σ model outputs 2C
    channels).
    """
    for t in reversed(range(denoise.diffusion.num_timesteps)):
        out = denoise(x, t)
        x = out.mean
        if t > 0:  # the last step returns the mean: the decoder's noise is not sampled
            x = x + torch.exp(0.5 * out.log_variance) * noise(x)
        yield SamplerStep(t, x, out.pred_x0)


def ancestral_steps(
    model_fn: ModelFn, diffusion: GaussianDiffusion, **kwargs: Any
) -> Iterator[SamplerStep]:
    """`ancestral_loop` from the shared keywords of `start` (see `drive`)."""
    return drive(ancestral_loop, model_fn, diffusion, **kwargs)


# ---------------------------------------------------------------------- DDIM
def ddim_loop(
    denoise: Denoiser, x: torch.Tensor, noise: NoiseSource, *, eta: float = 0.0
) -> Iterator[SamplerStep]:
    """(P15) DDIM(η), Song et al. 2021, eq. 12, for t = T−1 … 0:

    x_{t−1} = √ᾱ_{t−1} x̂0 + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t z, with
    σ_t = η √((1 − ᾱ_{t−1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}) and ε̂ recomputed from the
    (clipped) x̂0. η = 0 is deterministic; η = 1 has the variance β̃ of fixed-small
    ancestral sampling.
    """
    if not 0.0 <= eta <= 1.0:
        # σ_t² would exceed 1 − ᾱ_{t−1} for η > 1, leaving no room for the ε̂ direction.
        raise ValueError(f"eta must be in [0, 1], got {eta}; 0 is deterministic, 1 is DDPM-like")
    tables = denoise.diffusion.tables_on(x.device)
    for t in reversed(range(denoise.diffusion.num_timesteps)):
        out = denoise(x, t)
        tt = _timesteps(t, x)
        abar = broadcast_at(tables["alphas_cumprod"], tt, x)
        abar_prev = broadcast_at(tables["alphas_cumprod_prev"], tt, x)
        # 1. the noise scale σ_t of eq. 16 (0 for η = 0, and 0 at t = 0 where ᾱ_{t−1} = 1)
        sigma = eta * ((1 - abar_prev) / (1 - abar)).sqrt() * (1 - abar / abar_prev).sqrt()
        # 2. the "direction pointing to x_t" and the predicted x0
        x = abar_prev.sqrt() * out.pred_x0 + (1 - abar_prev - sigma**2).sqrt() * out.eps
        # 3. fresh noise, only when it is used (so η = 0 consumes no random numbers)
        if eta > 0 and t > 0:
            x = x + sigma * noise(x)
        yield SamplerStep(t, x, out.pred_x0)


def ddim_steps(
    model_fn: ModelFn, diffusion: GaussianDiffusion, **kwargs: Any
) -> Iterator[SamplerStep]:
    """`ddim_loop` from the shared keywords of `start` and `eta` (see `drive`)."""
    return drive(ddim_loop, model_fn, diffusion, **kwargs)


def ddim_reverse_steps(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    *,
    clip_denoised: bool = False,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Iterator[SamplerStep]:
    """Deterministic (η = 0) DDIM encoding of x0 [N, C, H, W], for t = 0 … T−1.

    Step t moves x from level ᾱ_{t−1} (the data for t = 0) to level ᾱ_t, i.e. to
    ᾱ_next of index t−1:  x ← √ᾱ_t x̂0 + √(1 − ᾱ_t) ε̂, with x̂0, ε̂ predicted at the
    input's own index t−1 (explicit Euler in the time-reversed ODE). For t = 0 the
    input is the data itself (x̂0 = x0), and ε̂ is read at index 0, the nearest level.
    The last x is the latent at index T−1, which `ddim_steps(noise=...)` maps back to x0
    up to the discretisation error (see the tests for its size).

    clip_denoised is off by default here: clipping x̂0 makes the map non-invertible.
    `SamplerStep.t` is the index of the level just reached.
    """
    x = x0
    tables = diffusion.tables_on(x.device)
    for t in range(diffusion.num_timesteps):
        src = max(t - 1, 0)
        out = model_step(model_fn, diffusion, x, src, clip_denoised, model_kwargs)
        pred_x0 = x if t == 0 else out.pred_x0
        abar = broadcast_at(tables["alphas_cumprod"], _timesteps(t, x), x)
        x = abar.sqrt() * pred_x0 + (1 - abar).sqrt() * out.eps
        yield SamplerStep(t, x, pred_x0)


# ---------------------------------------------------------------------- wrappers
def run_to_end(
    steps: Iterator[SamplerStep], callback: Callable[[SamplerStep], Any] | None = None
) -> torch.Tensor:
    """Exhaust a sampler loop and return its last x; `callback(step)` sees every step."""
    last = None
    for step in steps:
        if callback is not None:
            callback(step)
        last = step
    assert last is not None, "a diffusion always has at least one step"
    return last.x


def ancestral(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    *,
    callback: Callable[[SamplerStep], Any] | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Run `ancestral_steps` to the end and return x [N, C, H, W]; `callback(step)` sees
    every step."""
    return run_to_end(ancestral_steps(model_fn, diffusion, **kwargs), callback)


def ddim(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    *,
    callback: Callable[[SamplerStep], Any] | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Run `ddim_steps` to the end and return x [N, C, H, W]; `callback(step)` sees every
    step."""
    return run_to_end(ddim_steps(model_fn, diffusion, **kwargs), callback)


def ddim_reverse(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    *,
    callback: Callable[[SamplerStep], Any] | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Run `ddim_reverse_steps` and return the latent at index T−1 [N, C, H, W]."""
    return run_to_end(ddim_reverse_steps(model_fn, diffusion, x0, **kwargs), callback)


__all__ = [
    "Denoiser",
    "NoiseSource",
    "SamplerLoop",
    "SamplerStep",
    "ancestral",
    "ancestral_loop",
    "ancestral_steps",
    "ddim",
    "ddim_loop",
    "ddim_reverse",
    "ddim_reverse_steps",
    "ddim_steps",
    "drive",
    "per_sample_generators",
    "run_to_end",
    "start",
]
