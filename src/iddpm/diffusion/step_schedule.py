"""Bound-optimal step schedules (Watson et al. 2021): the K-step bound as a path cost.

The strided process that keeps base steps S_0 < … < S_{K−1} (code indices, P14) has the
bound (P10, P12), in bits/dim,

    L(S) = prior[S_{K−1}] + Σ_{i=1}^{K−1} kl[S_i, S_{i−1}] + decoder[S_1, S_0]    (K ≥ 2)
    L(S) = prior[S_0] + decoder[S_0, S_0]                                          (K = 1)

with, as means over M images (`BoundCosts`):
- kl[t, s] (s < t): E KL(q(x_s | x_t, x0) ‖ p_θ(x_s | x_t)) of the jump t → s;
- decoder[u, s] (s ≤ u): E −log p_θ(x0 | x_s), the discretised decoder at s when the next
  kept step is u (u = s: s is the only kept step). Its variance depends on u: a strided
  process gives its decoder the β̃ of the jump u → s (the "clipped" first log-variance);
- prior[t]: KL(q(x_t | x0) ‖ N(0, I)).
Entries that do not exist are +inf. One network call at x_t gives kl[t, s] for every
s < t and decoder[u, t] for every u ≥ t, so the matrix costs T calls per image.

The reverse variance of a jump t → s with β_{t→s} = 1 − ᾱ_t/ᾱ_s and
β̃_{t→s} = β_{t→s}(1 − ᾱ_s)/(1 − ᾱ_t) is what `respace` gives the process that keeps
exactly these steps: fixed-small β̃_{t→s}, fixed-large β_{t→s}, learned-range
exp(v log β_{t→s} + (1 − v) log β̃_{t→s}) with the model's v at x_t, learned exp(r); or,
with `eps_moments` (Γ of every base step), Analytic-DPM's β̃_{t→s} + coef1_{t→s}² v_t
(`diffusion.analytic`; its decoder keeps the fixed small variance). So a path's cost is
the strided process's `bits_per_dim` up to Monte-Carlo error (both draw one x_t per kept
step; here image i's noise at base step t comes from (seed, i, t)).

`optimal_steps` finds the K-step path of least cost by dynamic programming in O(K·T²).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from iddpm.diffusion.analytic import x0_variance_bounds
from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType, VarType
from iddpm.diffusion.likelihood import (
    LN2,
    check_uint8_grid,
    discretized_gaussian_log_likelihood,
    image_batches,
    normal_kl,
    traverse,
)
from iddpm.diffusion.samplers import per_sample_generators

ModelFn = Callable[..., torch.Tensor]
_CHUNK = 1 << 21  # elements per [n, d, steps] block of per-dimension costs


@dataclass
class BoundCosts:
    """Mean costs of the K-step bound over `num_images` images, bits/dim, float64 on the
    CPU (module docstring): kl [T, T] (kl[t, s], s < t), decoder [T, T] (decoder[u, s],
    s ≤ u, s < the `decoder_steps` it was computed for), prior [T]; +inf elsewhere."""

    kl: torch.Tensor
    decoder: torch.Tensor
    prior: torch.Tensor
    num_images: int

    @property
    def num_timesteps(self) -> int:
        return int(self.prior.shape[0])


def _check_steps(steps: Sequence[int], num_t: int) -> list[int]:
    kept = [int(s) for s in steps]
    increasing = all(a < b for a, b in itertools.pairwise(kept))
    if not kept or not increasing or kept[0] < 0 or kept[-1] >= num_t:
        raise ValueError(
            f"steps must be a non-empty, strictly increasing list in [0, {num_t}), got {kept}"
        )
    return kept


def path_cost(costs: BoundCosts, steps: Sequence[int]) -> float:
    """The bound in bits/dim of the strided process that keeps `steps` (sorted base steps),
    summed in the order `optimal_steps` uses, so equal paths give equal floats."""
    s = _check_steps(steps, costs.num_timesteps)
    if len(s) == 1:
        return float(costs.decoder[s[0], s[0]] + costs.prior[s[0]])
    total = costs.decoder[s[1], s[0]] + costs.kl[s[1], s[0]]
    for lo, hi in itertools.pairwise(s[1:]):
        total = total + costs.kl[hi, lo]
    return float(total + costs.prior[s[-1]])


def optimal_steps(costs: BoundCosts, num_steps: int) -> tuple[list[int], float]:
    """The K = `num_steps` kept steps of least bound, and that bound (bits/dim).

    Dynamic programming over the last kept step u: A_1[u] = min_s decoder[u, s] + kl[u, s],
    A_k[u] = min_s A_{k−1}[s] + kl[u, s], bound = min_u A_{K−1}[u] + prior[u]; O(K·T²).
    """
    num_t = costs.num_timesteps
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= num_t:
        raise ValueError(f"K = {num_steps!r} steps: choose an integer K in [1, {num_t}]")
    if num_steps == 1:
        totals = costs.decoder.diagonal() + costs.prior
        u = int(torch.argmin(totals))
        return [u], float(totals[u])
    best, arg = torch.min(costs.decoder + costs.kl, dim=1)
    back = [arg]
    for _ in range(num_steps - 2):
        best, arg = torch.min(best.unsqueeze(0) + costs.kl, dim=1)
        back.append(arg)
    totals = best + costs.prior
    u = int(torch.argmin(totals))
    bound = float(totals[u])
    if not math.isfinite(bound):
        raise ValueError(
            f"no {num_steps}-step path has a finite cost; allow the decoder at more steps"
        )
    steps = [u]
    for arg in reversed(back):
        steps.append(int(arg[steps[-1]]))
    return steps[::-1], bound


# ---------------------------------------------------------------------- the cost matrix
def _jump_tables(abar: torch.Tensor, t: int) -> tuple[torch.Tensor, ...]:
    """log β_{t→s}, log β̃_{t→s} and coef1_{t→s} for s = 0 … t−1: each [t] float64."""
    a_t, a_s = abar[t], abar[:t]
    beta = 1.0 - a_t / a_s
    tilde = beta * (1.0 - a_s) / (1.0 - a_t)
    coef1 = a_s.sqrt() * beta / (1.0 - a_t)
    return torch.log(beta), torch.log(tilde), coef1


def _decoder_log_var_min(abar: torch.Tensor, s: int) -> torch.Tensor:
    """log of the decoder's fixed variance at s for next kept step u = s … T−1: [T − s]
    (β̃_{u→s}, and 1 − ᾱ_s when s is the only kept step)."""
    a_s, a_u = abar[s], abar[s + 1 :]
    tilde = (1.0 - a_u / a_s) * (1.0 - a_s) / (1.0 - a_u)
    return torch.log(torch.cat([(1.0 - a_s).reshape(1), tilde]))


def _log_var(
    var_type: VarType | None, log_lo: torch.Tensor, log_hi: torch.Tensor, r: torch.Tensor | None
) -> torch.Tensor:
    """log σ² per (image, dimension, jump): [n, d, J] for learned types (r: [n, d] raw
    variance output), else the fixed [J] table log_lo (var_type None: fixed)."""
    if var_type is VarType.LEARNED_RANGE:
        v = ((r + 1.0) / 2.0).unsqueeze(-1)
        return v * log_hi + (1.0 - v) * log_lo
    if var_type is VarType.LEARNED:
        return r.unsqueeze(-1).expand(*r.shape, log_lo.shape[0])
    return log_lo


def _kl_row(var_type, err, r, log_beta, log_tilde, coef1, fixed_log_var) -> torch.Tensor:
    """Sum over images of the mean-over-dimensions KL of jumps t → s, s < t: [t] bits.

    err = x0 − x̂0 and r (raw variance output) are [n, d]. Per dimension
    KL = ½(e^δ − 1 − δ) + ½ coef1² err² e^{−log σ²} with δ = log β̃ − log σ² (P10).
    """
    if var_type is None:  # one σ² per jump: only the mean squared error matters
        mse = err.pow(2).mean(1, keepdim=True)  # [n, 1]
        kl = normal_kl(coef1 * mse.sqrt(), log_tilde, torch.zeros(()), fixed_log_var)
        return kl.sum(0) / LN2
    if var_type is VarType.LEARNED:  # log σ² = r for every jump: means over d suffice
        inv = torch.exp(-r)
        a, b = inv.mean(1, keepdim=True), (err.pow(2) * inv).mean(1, keepdim=True)
        kl = 0.5 * (log_tilde.exp() * a - 1.0 - log_tilde + r.mean(1, keepdim=True))
        return (kl + 0.5 * coef1**2 * b).sum(0) / LN2
    # learned range: log σ² = log β̃ + v·L with L = log β − log β̃, so per dimension
    # KL = ½[e^{−vL}(1 + c·err²) − 1 + vL] with c = coef1²/β̃; the two means over d of
    # e^{−vL} and err²·e^{−vL} are one batched product per block of jumps.
    v = (r + 1.0) / 2.0
    weights = torch.stack([torch.ones_like(err), err.pow(2)], dim=2) / err.shape[1]  # [n, d, 2]
    out = torch.empty_like(log_tilde)
    step = max(1, _CHUNK // err.numel())
    for lo in range(0, log_tilde.shape[0], step):
        sl = slice(lo, lo + step)
        big_l = log_beta[sl] - log_tilde[sl]
        e = torch.exp(-v.unsqueeze(-1) * big_l)  # [n, d, S]
        means = torch.bmm(e.transpose(1, 2), weights)  # [n, S, 2]
        c = coef1[sl] ** 2 / log_tilde[sl].exp()
        kl = means[..., 0] + c * means[..., 1] - 1.0 + big_l * v.mean(1, keepdim=True)
        out[sl] = 0.5 * kl.sum(0) / LN2
    return out


def _decoder_col(var_type, x0, pred, r, log_min, log_max, exact) -> torch.Tensor:
    """Sum over images of the decoder NLL at s for next kept step u = s … T−1: [T − s]."""
    out = torch.empty_like(log_min)
    step = max(1, _CHUNK // x0.numel())
    for lo in range(0, log_min.shape[0], step):
        sl = slice(lo, lo + step)
        log_var = _log_var(var_type, log_min[sl], log_max, r)
        ll = discretized_gaussian_log_likelihood(
            x0.unsqueeze(-1), pred.unsqueeze(-1), 0.5 * log_var, exact=exact
        )
        out[sl] = -ll.mean(1).sum(0) / LN2
    return out


def _jump_var_type(diffusion: GaussianDiffusion, eps_moments: Any) -> tuple[Any, Any]:
    """(var_type used for jumps, None for fixed scalar variances; analytic v_t [T] or None)."""
    if diffusion.mean_type is MeanType.PREV_MEAN:
        raise ValueError(
            "a prev-mean model predicts one step's mean, so jumps t → s are undefined; "
            "bound-optimal schedules need an epsilon or x0 model"
        )
    if eps_moments is None:
        learned = diffusion.var_type.learned
        return (diffusion.var_type if learned else None), None
    gamma = torch.as_tensor(eps_moments, dtype=torch.float64).reshape(-1)
    if gamma.numel() != diffusion.num_timesteps:
        raise ValueError(
            f"eps_moments has {gamma.numel()} entries but the base process has "
            f"{diffusion.num_timesteps} steps; estimate Γ on the unstrided process"
        )
    abar = diffusion.alphas_cumprod
    var_x0 = ((1.0 - abar) / abar * (1.0 - gamma)).clamp_min(0.0)
    return None, torch.minimum(var_x0, x0_variance_bounds(diffusion))


def _fixed_log_var(diffusion, t, log_beta, log_tilde, coef1, var_x0) -> torch.Tensor:
    """log σ² of the jumps t → s for fixed variances (or Analytic-DPM): [t]."""
    if var_x0 is not None:
        return torch.log(log_tilde.exp() + coef1**2 * var_x0[t])
    return log_beta if diffusion.var_type is VarType.FIXED_LARGE else log_tilde


class _CostPlan:
    """What one network call at x_t adds to the summed cost matrices (module docstring)."""

    def __init__(self, diffusion, eps_moments, num_dec: int, exact: bool, dev) -> None:
        self.jump_type, var_x0 = _jump_var_type(diffusion, eps_moments)
        learned = diffusion.var_type.learned and var_x0 is None
        self.dec_type = diffusion.var_type if learned else None
        self.var_x0 = var_x0.to(dev) if var_x0 is not None else None
        self.diffusion, self.num_dec, self.exact = diffusion, num_dec, exact
        self.abar = diffusion.alphas_cumprod.to(dev)

    def add(self, sums: torch.Tensor, step: int, x0: torch.Tensor, pred, r) -> None:
        """sums [2, T, T] (kl, decoder) += the image sums of kl[step, :step] and
        decoder[step:, step]; x0, pred (x̂0), r (raw variance output or None): [n, d]."""
        if step > 0:
            log_beta, log_tilde, coef1 = _jump_tables(self.abar, step)
            fixed = _fixed_log_var(self.diffusion, step, log_beta, log_tilde, coef1, self.var_x0)
            row = _kl_row(self.jump_type, x0 - pred, r, log_beta, log_tilde, coef1, fixed)
            sums[0, step, :step] += row
        if step < self.num_dec:
            log_min = _decoder_log_var_min(self.abar, step)
            log_max = torch.log(1.0 - self.abar[step])
            col = _decoder_col(self.dec_type, x0, pred, r, log_min, log_max, self.exact)
            sums[1, step:, step] += col


def _prior_sum(abar: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Image sums of KL(q(x_t | x0) ‖ N(0, I)) for every t, bits/dim: [T]; x0 [n, d]."""
    rms = x0.pow(2).mean(1, keepdim=True).sqrt()
    zero = torch.zeros((), dtype=torch.float64, device=x0.device)
    return normal_kl(abar.sqrt() * rms, torch.log(1.0 - abar), zero, zero).sum(0) / LN2


def _check_decoder_steps(decoder_steps: int | None, num_t: int) -> int:
    if decoder_steps is None:
        return num_t
    if isinstance(decoder_steps, bool) or not isinstance(decoder_steps, int):
        raise ValueError(f"decoder_steps must be an integer in [1, {num_t}], got {decoder_steps!r}")
    if not 1 <= decoder_steps <= num_t:
        raise ValueError(f"decoder_steps must be in [1, {num_t}], got {decoder_steps}")
    return decoder_steps


@torch.no_grad()
def bound_cost_matrix(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    *,
    seed: int = 0,
    batch_size: int = 64,
    timestep_batch: int = 16,
    clip_denoised: bool = True,
    eps_moments: Sequence[float] | torch.Tensor | None = None,
    decoder_steps: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    exact: bool = True,
    progress: Callable[[int], None] | None = None,
) -> BoundCosts:
    """The mean costs of every jump, decoder and prior over M images (module docstring).

    model_fn(x_t, t, **model_kwargs) runs the unstrided base process `diffusion` (mean
    type epsilon or x0); x0: [M, C, H, W] on the uint8 grid, evaluated `batch_size`
    images and `timestep_batch` steps per network call. eps_moments: Γ [T] of the base
    process for Analytic-DPM variances (else `diffusion.var_type`'s). decoder_steps: the
    decoder may sit at base steps s < decoder_steps only (default all). Cost: T network
    calls per image, plus T·decoder_steps·d discretised-Gaussian evaluations (and T²·d/2
    KL evaluations for learned variances) per image; `progress(images_done)` per batch.
    """
    check_uint8_grid(x0)
    num_t, m = diffusion.num_timesteps, x0.shape[0]
    if not isinstance(timestep_batch, int) or timestep_batch < 1:
        raise ValueError(f"timestep_batch must be an integer >= 1, got {timestep_batch!r}")
    num_dec = _check_decoder_steps(decoder_steps, num_t)
    dev = x0.device
    plan = _CostPlan(diffusion, eps_moments, num_dec, exact, dev)
    sums = torch.zeros(2, num_t, num_t, dtype=torch.float64, device=dev)  # kl, decoder
    prior = torch.zeros(num_t, dtype=torch.float64, device=dev)
    batches = image_batches(x0, batch_size, lambda r: per_sample_generators(seed, r))
    blocks = traverse(
        model_fn, diffusion, batches, timestep_batch=timestep_batch, model_kwargs=model_kwargs
    )
    for b in blocks:
        flat = b.x0.double().reshape(b.n, -1)
        pm = diffusion.p_mean_variance(b.output, b.x_t, b.t, clip_denoised=clip_denoised)
        preds = pm.pred_x0.double().reshape(b.k, b.n, -1)
        raw = pm.model_var_values
        raws = raw.double().reshape(b.k, b.n, -1) if raw is not None else [None] * b.k
        for j, step in enumerate(b.t_cols[0].tolist()):
            plan.add(sums, step, flat, preds[j], raws[j])
        if b.last:
            prior += _prior_sum(plan.abar, flat)
            if progress is not None:
                progress(b.lo + b.n)
    if m == 0:
        raise ValueError("no images given; pass x0 with at least one image")
    inf = torch.tensor(math.inf, dtype=torch.float64, device=dev)
    below = torch.ones(num_t, num_t, dtype=torch.bool, device=dev).tril(-1)
    dec_ok = below | torch.eye(num_t, dtype=torch.bool, device=dev)
    dec_ok[:, num_dec:] = False
    return BoundCosts(
        kl=torch.where(below, sums[0] / m, inf).cpu(),
        decoder=torch.where(dec_ok, sums[1] / m, inf).cpu(),
        prior=(prior / m).cpu(),
        num_images=m,
    )
