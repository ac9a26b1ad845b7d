"""Analytic-DPM (Bao et al. 2022): the optimal reverse variance from the model's own ε.

For the ancestral reverse step of a process with K steps (code index i = paper's n − 1,
docs/paper.md's convention; the process may be strided), Bao et al.'s Theorem 1 with
λ_n² = β̃_n gives the isotropic variance that minimises the bound given the model's mean:

    σ_n² = β̃_n + coef1_n² · v_n,   v_n = (β̄_n/ᾱ_n)(1 − Γ_n),   Γ_n = E_q ‖ε_θ(x_n, n)‖²/d,

with β̄_n = 1 − ᾱ_n and coef1_n = √ᾱ_{n−1} β_n/β̄_n, the posterior mean's coefficient of
x0 (P3); the paper writes coef1_n² β̄_n/ᾱ_n as (√(β̄_n/α_n) − √(β̄_{n−1} − λ_n²))². v_n
estimates E Var[x0 | x_n] per dimension (for the exact ε, E‖ε − ε̂‖²/d = 1 − Γ_n).
Γ_n is a Monte-Carlo mean over training images (`estimate_eps_moments`).

Bounds (Theorem 2): 0 ≤ E Var[x0 | x_n] ≤ β̄_n/ᾱ_n, and ≤ ((b − a)/2)² for data in
[a, b]^d; v_n is clipped into [0, min of the two], so β̃_n ≤ σ_n² ≤ β̃_n + coef1_n²·max v_n.

The first step (n = 1, the decoder p(x0 | x_1)): there λ_1² = β̃_1 = 0 and the estimate is
a continuous posterior variance, not a bin width. Like the authors' implementation, the
decoder keeps the fixed small variance: table index 0 is exp(posterior_log_variance_clipped
[0]), which is their β̃_2 for an unstrided process (for a strided one it is the β̃ of the
jump from the next kept step, as in every fixed-variance process here). For sampling, the
last step returns the mean and the step before it (n = 2 → 1, index 1) is clipped so that
the mean absolute noise it adds, σ_2·√(2/π), is at most `clip_pixel` uint8 levels of 2/255:
σ_2² ≤ (clip_pixel · 2/255 · √(π/2))². The authors use 1 with the cosine schedule and 2
with the linear one; inf switches it off. The bound uses the unclipped table.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType
from iddpm.diffusion.likelihood import image_batches, traverse
from iddpm.diffusion.samplers import (
    Denoiser,
    NoiseSource,
    SamplerStep,
    ancestral_loop,
    per_sample_generators,
)

ModelFn = Callable[..., torch.Tensor]
_LEVEL = 2.0 / 255.0  # one uint8 level on the [−1, 1] scale


# ---------------------------------------------------------------------- Γ_n from data
def model_eps(
    diffusion: GaussianDiffusion, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The ε a model output implies (P7), unclipped, from its mean channels: [N, C, H, W]."""
    mean_out, _ = diffusion.split_output(output, x_t)
    if diffusion.mean_type is MeanType.EPSILON:
        return mean_out
    return diffusion.p_mean_variance(output, x_t, t, clip_denoised=False).eps


@torch.no_grad()
def estimate_eps_moments(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    x0: torch.Tensor | Iterable[torch.Tensor],
    *,
    seed: int = 0,
    batch_size: int = 256,
    timestep_batch: int = 16,
    model_kwargs: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Γ_n = E_q ‖ε_θ(x_n, n)‖²/d for every step of `diffusion`: [K] float64 on the CPU.

    x0: training images [M, C, H, W] in [−1, 1] (split into `batch_size` batches) or an
    iterable of such batches. model_fn(x_t, t, **model_kwargs) with t this process's index
    (wrap strided models in their adapter); per-image tensors of model_kwargs are indexed
    by the global image number. Image m's noise at step n is drawn by `likelihood`'s rule
    from a generator seeded with (seed, m), so Γ depends only on the images and the seed,
    not on the batching. Network calls cover `timestep_batch` steps of one batch each;
    `progress(images_done)` after each batch. Its Monte-Carlo standard error is about
    Γ_n·√(2/(M·d)) for Gaussian ε̂.
    """
    if not isinstance(timestep_batch, int) or timestep_batch < 1:
        raise ValueError(f"timestep_batch must be an integer >= 1, got {timestep_batch!r}")
    num_t = diffusion.num_timesteps
    per_image: list[torch.Tensor] = []  # [n, K] sums of ε̂² over dimensions, per batch
    dims = 0
    batches = image_batches(x0, batch_size, lambda r: per_sample_generators(seed, r))
    blocks = traverse(
        model_fn, diffusion, batches, timestep_batch=timestep_batch, model_kwargs=model_kwargs
    )
    sums = torch.empty(0, num_t, dtype=torch.float64)
    for b in blocks:
        if b.t_cols[0, 0] == 0:  # a new batch
            sums, dims = torch.empty(b.n, num_t, dtype=torch.float64), b.x0[0].numel()
        eps = model_eps(diffusion, b.output, b.x_t, b.t)
        sums[:, b.t_cols[0].cpu()] = eps.double().pow(2).reshape(b.k, b.n, -1).sum(2).t().cpu()
        if b.last:
            per_image.append(sums)
            if progress is not None:
                progress(b.lo + b.n)
    if not per_image:
        raise ValueError("no training images given; pass x0 with at least one image")
    # one reduction over all images at the end: the same sum whatever the batching
    table = torch.cat(per_image)
    return table.sum(0) / (table.shape[0] * dims)


# ---------------------------------------------------------------------- the variance
def _check_moments(eps_moments: Sequence[float] | torch.Tensor, num_t: int) -> torch.Tensor:
    gamma = torch.as_tensor(eps_moments, dtype=torch.float64).detach().cpu().reshape(-1)
    if gamma.numel() == 0:
        raise ValueError(
            "Analytic-DPM needs Γ_n = E‖ε‖²/d from training images; estimate it with "
            "analytic.estimate_eps_moments (the registry's statistic 'gamma') first"
        )
    if gamma.numel() != num_t:
        raise ValueError(
            f"the Γ table has {gamma.numel()} entries but the process has {num_t} steps; "
            "re-estimate for this step spacing"
        )
    if not bool((torch.isfinite(gamma) & (gamma >= 0)).all()):
        raise ValueError("Γ_n = E‖ε‖²/d must be finite and >= 0; re-estimate the table")
    return gamma


def x0_variance_bounds(
    diffusion: GaussianDiffusion, x0_range: tuple[float, float] = (-1.0, 1.0)
) -> torch.Tensor:
    """Upper bound of E Var[x0 | x_n] per dimension (Theorem 2): min(β̄_n/ᾱ_n, ((b−a)/2)²),
    [K] float64; the lower bound is 0."""
    abar = diffusion.alphas_cumprod
    half = (x0_range[1] - x0_range[0]) / 2.0
    return torch.clamp((1.0 - abar) / abar, max=half**2)


def analytic_variance(
    diffusion: GaussianDiffusion,
    eps_moments: Sequence[float] | torch.Tensor,
    *,
    x0_range: tuple[float, float] = (-1.0, 1.0),
) -> torch.Tensor:
    """Analytic-DPM's reverse variance σ_n² of every step: [K] float64 (module docstring).

    eps_moments: Γ [K] of this very process (a table of another spacing is a one-line
    ValueError); x0_range: the data's bounds [a, b] for Theorem 2's clip. Index 0 is the
    decoder's fixed small variance.
    """
    gamma = _check_moments(eps_moments, diffusion.num_timesteps)
    abar = diffusion.alphas_cumprod
    var_x0 = ((1.0 - abar) / abar * (1.0 - gamma)).clamp_min(0.0)
    var_x0 = torch.minimum(var_x0, x0_variance_bounds(diffusion, x0_range))
    sigma2 = diffusion.posterior_variance + diffusion.posterior_mean_coef1**2 * var_x0
    sigma2[0] = torch.exp(diffusion.posterior_log_variance_clipped[0])
    return sigma2


def clip_for_sampling(variance: torch.Tensor, clip_pixel: float) -> torch.Tensor:
    """A copy of a [K] variance table whose index 1 (the step before the decoder) adds noise
    of mean absolute value at most `clip_pixel` uint8 levels: σ² ≤ (clip_pixel·2/255·√(π/2))²."""
    out = variance.clone()
    if out.numel() > 1 and math.isfinite(clip_pixel):
        out[1] = out[1].clamp_max((clip_pixel * _LEVEL * math.sqrt(math.pi / 2.0)) ** 2)
    return out


# ---------------------------------------------------------------------- the sampler
@dataclass(frozen=True)
class AnalyticOptions:
    """Options of the `analytic` sampler: Γ from data (not a flag) and the sampling clip."""

    eps_moments: tuple[float, ...] = dataclasses.field(
        default=(),
        metadata={
            "cli": False,
            "statistic": "gamma",
            "help": "Γ_n = E‖ε‖²/d of each step, from training images",
        },
    )
    clip_pixel: float = dataclasses.field(
        default=1.0,
        metadata={
            "help": "cap the noise of the step before the last at this many uint8 levels "
            "(Bao et al.: 1 for cosine, 2 for linear schedules; inf: no cap)"
        },
    )

    def __post_init__(self) -> None:
        gamma = tuple(float(g) for g in self.eps_moments)
        if not all(math.isfinite(g) and g >= 0 for g in gamma):
            raise ValueError("Γ_n = E‖ε‖²/d must be finite and >= 0; re-estimate the table")
        object.__setattr__(self, "eps_moments", gamma)
        if not float(self.clip_pixel) > 0:
            raise ValueError(
                f"--clip-pixel {self.clip_pixel} must be > 0 (inf switches the clip off)"
            )


def analytic_loop(
    denoise: Denoiser,
    x: torch.Tensor,
    noise: NoiseSource,
    *,
    eps_moments: Sequence[float] | torch.Tensor = (),
    clip_pixel: float = 1.0,
) -> Iterator[SamplerStep]:
    """Ancestral sampling (P6, P7) with Analytic-DPM's variance: the model's mean channels,
    σ_n² from `analytic_variance` clipped by `clip_for_sampling`. A sampler loop
    (`samplers.SamplerLoop`); eps_moments: Γ [K] of this process."""
    d = denoise.diffusion
    variance = clip_for_sampling(analytic_variance(d, eps_moments), clip_pixel)
    return ancestral_loop(denoise.on(d.with_reverse_variance(variance)), x, noise)
