"""Unbiased Monte-Carlo estimate of the variational bound, in bits/dim (docs/paper.md P10, P13).

`estimate_bits_per_dim` estimates the same bound as `likelihood.bits_per_dim` from K sampled
steps per image instead of all T, with a standard error: "stratified" draws one step in
each of K equal strata of [0, T), "log-stratified" in each of K strata whose sizes grow
geometrically from 1 (so the first, largest terms are evaluated exactly: the decoder L_0
alone carries ~20% of a digits model's bound), "importance" draws K iid steps from given
probabilities.
Units and the index convention are those of `likelihood` (code step t is the paper's t+1).

Randomness: with one generator per image (see `likelihood`'s module docstring), image i's
K steps are drawn from its own generator first, then its K noise draws as one draw of
shape [K, C, H, W]; its estimate is then a function of that generator alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import torch

from iddpm.diffusion.gaussian import GaussianDiffusion
from iddpm.diffusion.likelihood import (
    Generators,
    ModelFn,
    StepNoise,
    _check_inputs,
    _draw,
    _eval_columns,
    per_image,
    prior_bits,
)


class McMethod(enum.Enum):
    """How `estimate_bits_per_dim` draws its K steps per image."""

    STRATIFIED = "stratified"  # one uniform step in each of K equal strata of [0, T)
    LOG_STRATIFIED = "log-stratified"  # strata growing geometrically from size 1
    IMPORTANCE = "importance"  # K iid steps t ~ probs, weighted 1/(K·p_t)


@dataclass
class McBpdResult:
    """Unbiased estimate of the bound per image, bits per dimension, float64.

    total_bpd, stderr, prior_bpd: [N]; timesteps, weights, terms_bpd: [N, K] with
    total_bpd = prior_bpd + (weights · terms_bpd).sum(1). `stderr` is the Monte-Carlo
    standard error of total_bpd (NaN when K is too small to estimate it).
    """

    total_bpd: torch.Tensor
    stderr: torch.Tensor
    prior_bpd: torch.Tensor
    timesteps: torch.Tensor
    weights: torch.Tensor
    terms_bpd: torch.Tensor

    @property
    def mean_stderr(self) -> float:
        """Monte-Carlo standard error of total_bpd.mean() (images drawn independently)."""
        return float(self.stderr.pow(2).sum().sqrt() / self.stderr.numel())


def _strata(num_t: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boundaries floor(j·T/K): (starts [K], sizes [K]) int64, every size >= 1 when K <= T."""
    edges = torch.tensor([(j * num_t) // k for j in range(k + 1)], dtype=torch.long)
    return edges[:-1], edges[1:] - edges[:-1]


def _log_strata(num_t: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boundaries e_j = floor(T^(j/K)), kept strictly increasing and short enough that every
    later stratum still gets a step: (starts [K], sizes [K]), sizes 1, 1, …, growing to the
    end. With T = 1000, K = 16: sizes 1, 1, 1, 2, 3, 5, 7, 11, 17, 26, 41, 62, 96, 148, 228, 351.
    """
    edges = [0]
    for j in range(1, k):
        edges.append(max(edges[-1] + 1, min(num_t - (k - j), int(num_t ** (j / k)))))
    edges.append(num_t)
    e = torch.tensor(edges, dtype=torch.long)
    return e[:-1], e[1:] - e[:-1]


def _strata_for(method: McMethod, num_t: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _log_strata(num_t, k) if method is McMethod.LOG_STRATIFIED else _strata(num_t, k)


def _stratified_stderr(terms: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Collapsed-strata variance: pair consecutive strata (the last three if K is odd) and
    treat each group as one stratum sampled g times: var = Σ_groups m²·s²(L)/g, m its size.
    Its expectation is >= the true variance (it adds the spread of the strata means), so
    the stderr is conservative. terms: [N, K] bits; sizes: [K]. Returns [N] (NaN for K=1).
    """
    k = terms.shape[1]
    if k < 2:
        return torch.full_like(terms[:, 0], float("nan"))
    bounds = list(range(0, k - 1, 2))
    groups = [(b, b + 2) for b in bounds[:-1]] + [(bounds[-1], k)]
    var = torch.zeros_like(terms[:, 0])
    for lo, hi in groups:
        m = float(sizes[lo:hi].sum())
        var += m**2 * terms[:, lo:hi].var(dim=1, unbiased=True) / (hi - lo)
    return var.sqrt()


def _iid_stderr(y: torch.Tensor) -> torch.Tensor:
    """Standard error of y.mean(1) from K iid draws y: [N, K]; NaN for K = 1."""
    if y.shape[1] < 2:
        return torch.full_like(y[:, 0], float("nan"))
    return (y.var(dim=1, unbiased=True) / y.shape[1]).sqrt()


def _sample_steps(
    method: McMethod,
    num_t: int,
    n: int,
    k: int,
    probs: torch.Tensor | None,
    like: torch.Tensor,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps [N, K] int64, weights [N, K] float64) on x0's device, all from one
    generator (n = 1 for one image's own generator)."""
    if method is not McMethod.IMPORTANCE:
        starts, sizes = (v.to(like.device) for v in _strata_for(method, num_t, k))
        u = _draw("uniform", (n, k), like, generator)
        t = starts + (u * sizes).floor().long().clamp_max(sizes - 1)
        return t, sizes.to(torch.float64).expand(n, k)
    p = torch.full((num_t,), 1.0 / num_t, dtype=torch.float64) if probs is None else probs
    flat = torch.multinomial(
        p.to(generator.device if generator else "cpu"), n * k, True, generator=generator
    )
    t = flat.reshape(n, k).to(like.device)
    return t, 1.0 / (k * p.to(like.device)[t])


def _draws(
    method: McMethod,
    num_t: int,
    k: int,
    probs: torch.Tensor | None,
    x0: torch.Tensor,
    generator: Generators,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps [N, K], weights [N, K] and noise [K, N, C, H, W] under the module's rule."""
    n = x0.shape[0]
    gens = per_image(generator, n)
    if gens is None:  # one generator for the batch: all steps first, then column by column
        single = generator if isinstance(generator, torch.Generator) else None
        t, w = _sample_steps(method, num_t, n, k, probs, x0, single)
        return t, w, StepNoise(single, x0).take(k)
    drawn = [_sample_steps(method, num_t, 1, k, probs, x0, g) for g in gens]
    shape = (k, *x0.shape[1:])
    noise = [torch.randn(shape, generator=g, device=g.device, dtype=x0.dtype) for g in gens]
    return (
        torch.cat([d[0] for d in drawn]),
        torch.cat([d[1] for d in drawn]),
        torch.stack(noise, dim=1).to(x0.device),
    )


def _check_probs(probs: torch.Tensor | None, num_t: int) -> torch.Tensor | None:
    if probs is None:
        return None
    p = torch.as_tensor(probs, dtype=torch.float64).detach().cpu()
    if p.shape != (num_t,) or not bool((p > 0).all()) or abs(float(p.sum()) - 1.0) > 1e-6:
        raise ValueError(
            f"probs must be [{num_t}] positive and sum to 1, got shape {tuple(p.shape)}; "
            "a zero-probability step would bias the estimate, so mix in uniform mass"
        )
    return p / p.sum()


@torch.no_grad()
def estimate_bits_per_dim(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    *,
    num_samples_per_image: int,
    method: McMethod | str = McMethod.STRATIFIED,
    probs: torch.Tensor | None = None,
    generator: Generators = None,
    clip_denoised: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    timestep_batch: int = 16,
    exact: bool = True,
) -> McBpdResult:
    """Unbiased Monte-Carlo estimate of the full bound from K sampled steps per image.

    total = L_T + Σ_t L_t with the sum estimated per image (P10, P13's identity
    Σ_t L_t = E_{t∼p}[L_t/p_t]): "stratified" splits [0, T) into K strata at floor(j·T/K),
    draws one uniform step in each and weights it by its stratum's size; "log-stratified"
    does the same with strata growing geometrically from size 1 (`_log_strata`), which
    follows the bound's terms (largest at small t) and has far less variance; "importance"
    draws K iid steps from `probs` ([T], positive, default uniform) with weights 1/(K·p_t).
    E over steps and noise equals E over noise of `bits_per_dim`. generator: one per
    image (module docstring) or one for the batch (all steps first, then one noise draw
    of x0's shape per column k). Other arguments as in `bits_per_dim`; K network
    evaluations per image.
    """
    _check_inputs(diffusion, x0, timestep_batch)
    num_t, n, k = diffusion.num_timesteps, x0.shape[0], num_samples_per_image
    try:
        method = McMethod(method)
    except ValueError:
        choices = ", ".join(m.value for m in McMethod)
        raise ValueError(
            f"unknown Monte-Carlo method {method!r}; choose one of: {choices}"
        ) from None
    stratified = method is not McMethod.IMPORTANCE
    if not isinstance(k, int) or k < 1 or (stratified and k > num_t):
        allowed = f"in [1, {num_t}] (one per stratum of T)" if stratified else ">= 1"
        raise ValueError(f"num_samples_per_image must be an integer {allowed}, got {k!r}")
    p = _check_probs(probs, num_t)
    if p is not None and method is not McMethod.IMPORTANCE:
        raise ValueError("probs only applies to method='importance'; drop it or switch method")
    t, weights, noise = _draws(method, num_t, k, p, x0, generator)
    terms = torch.empty(n, k, dtype=torch.float64, device=x0.device)
    for start in range(0, k, timestep_batch):
        cols = slice(start, min(start + timestep_batch, k))
        terms[:, cols] = _eval_columns(
            model_fn, diffusion, x0, t[:, cols], noise[cols], clip_denoised, model_kwargs, exact
        )[0]
    prior = prior_bits(diffusion, x0).to(torch.float64)
    total = prior + (weights * terms).sum(dim=1)
    if stratified:
        stderr = _stratified_stderr(terms, _strata_for(method, num_t, k)[1].to(x0.device))
    else:
        stderr = _iid_stderr(terms * weights * k)  # iid draws of L_t / p_t
    return McBpdResult(total, stderr, prior, t, weights, terms)
