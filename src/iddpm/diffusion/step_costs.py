"""Sampler-optimal step schedules: one-step errors against a fine ODE trajectory and the
K-step path of least total error (the idea of Chen et al. 2024, "GITS": dynamic programming
over a matrix of local errors; the bound-optimal DP of `step_schedule` with new costs).

Candidates are base steps g_0 < … < g_{N−1} (by default N steps of Karras spacing; the
schedule's top g_{N−1} is where sampling starts). For M starting points x_T, a fine
solver (UniPC, order 3, on the candidate grid refined `refine` times) gives the reference
states x*(g) at every candidate and the reference sample x̂0*. A K-step schedule
S_{K−1} = g_{N−1} > … > S_0 then costs, in mean squared error per dimension,

    E(S) = Σ_{k ≥ 1} c[S_k, S_{k−1}] + f[S_0],
    c[j, i] = E‖step(x*(g_j), j → i) − x*(g_i)‖²/d,    f[i] = E‖x̂0(x*(g_i)) − x̂0*‖²/d,

the local error of one step started on the reference (the step of the sampler's one-step
form: "euler" = DDIM = DPM-Solver++(1), one network call at g_j, which GITS uses for every
multistep solver; "trapezoid" = EDM's Heun step, a second call at g_i, or the Euler step
where `heun` takes one), and the error of the
last call's x̂0 (every sampler here returns x̂0 of its state at index 0). `optimal_path`
minimises E by dynamic programming in O(K·N²):

    A_1[i] = f[i],   A_k[j] = min_{i<j} c[j, i] + A_{k−1}[i],   E* = A_K[N−1].

Local errors of different steps are summed, not propagated: the cost is a proxy for the
global error whose DP is exact for the proxy (`brute_force_path` checks it).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from iddpm.diffusion.gaussian import GaussianDiffusion
from iddpm.diffusion.respace import karras_steps, respace
from iddpm.diffusion.samplers import Denoiser, run_to_end
from iddpm.diffusion.sigma_solvers import HEUN_MAX_RATIO
from iddpm.diffusion.unipc import unipc_loop

ModelFn = Callable[..., torch.Tensor]
FORMS = ("euler", "trapezoid")


@dataclass
class StepCosts:
    """Costs over candidate base steps `steps` [N] (increasing ints): local [N, N] with
    local[j, i] the error of the step j → i (i < j; +inf elsewhere), final [N]; float64."""

    steps: list[int]
    local: torch.Tensor
    final: torch.Tensor

    def check(self) -> None:
        """A one-line ValueError unless the tables fit together (used on cached costs)."""
        n = len(self.steps)
        ok = (
            n >= 1
            and all(a < b for a, b in itertools.pairwise(self.steps))
            and tuple(self.local.shape) == (n, n)
            and tuple(self.final.shape) == (n,)
            and not bool(torch.isnan(self.local).any() or torch.isnan(self.final).any())
        )
        if not ok:
            raise ValueError("step costs do not fit together (shapes, order or NaNs)")


def path_error(costs: StepCosts, path: Sequence[int]) -> float:
    """E(S) of a path given as candidate positions, increasing, ending at the top."""
    total = costs.final[path[0]]
    for lo, hi in itertools.pairwise(path):
        total = total + costs.local[hi, lo]
    return float(total)


def optimal_path(costs: StepCosts, num_steps: int) -> tuple[list[int], float]:
    """The K = `num_steps` candidate positions of least E that end at the top (N − 1), and
    E; positions increasing. One-line ValueError for K outside [1, N]."""
    n = len(costs.steps)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= n:
        raise ValueError(f"K = {num_steps!r} steps: choose an integer K in [1, {n}]")
    best = costs.final.clone()  # A_1
    back = []
    for _ in range(num_steps - 1):
        # A_k[j] = min_i local[j, i] + A_{k−1}[i]
        best, arg = torch.min(costs.local + best.unsqueeze(0), dim=1)
        back.append(arg)
    path = [n - 1]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    return path[::-1], float(best[n - 1])


def brute_force_path(costs: StepCosts, num_steps: int) -> tuple[list[int], float]:
    """`optimal_path` by trying every K-subset that ends at the top (small cases only)."""
    n = len(costs.steps)
    best: tuple[list[int], float] = ([], math.inf)
    for rest in itertools.combinations(range(n - 1), num_steps - 1):
        path = [*rest, n - 1]
        e = path_error(costs, path)
        if e < best[1]:
            best = (path, e)
    return best


def default_candidates(diffusion: GaussianDiffusion, count: int) -> list[int]:
    """`count` candidate base steps: Karras spacing (ρ = 7, the package's σ range)."""
    return karras_steps(count, diffusion.alphas_cumprod)


def _refined(candidates: Sequence[int], refine: int) -> list[int]:
    """The candidates plus `refine − 1` base steps evenly between each neighbouring pair
    (where there is room)."""
    out = set(candidates)
    for lo, hi in itertools.pairwise(candidates):
        for r in range(1, refine):
            out.add(lo + round(r * (hi - lo) / refine))
    return sorted(out)


@torch.no_grad()
def reference_states(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    candidates: Sequence[int],
    x_T: torch.Tensor,
    refine: int = 4,
    clip_denoised: bool = True,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(x*(g) at every candidate, x̂0*) of the fine solve from x_T at the top candidate:
    UniPC order 3 on the candidates refined `refine` times. model_fn takes base steps."""
    fine = _refined(candidates, refine)
    spaced, timestep_map = respace(diffusion, fine)

    def spaced_fn(x: torch.Tensor, t: torch.Tensor, **kw) -> torch.Tensor:
        return model_fn(x, timestep_map.to(t.device)[t], **kw)

    where = {step: i for i, step in enumerate(fine)}
    states: dict[int, torch.Tensor] = {len(fine) - 1: x_T}
    denoise = Denoiser(spaced_fn, spaced, clip_denoised)
    loop = unipc_loop(denoise, x_T, lambda x: torch.zeros_like(x), order=3)

    def keep(step) -> None:
        if step.t > 0:
            states[step.t - 1] = step.x

    final = run_to_end(loop, keep)
    return [states[where[g]] for g in candidates], final


def _levels(diffusion: GaussianDiffusion, step: int) -> tuple[float, float]:
    """(√ᾱ, σ = √((1 − ᾱ)/ᾱ)) of a base step."""
    ab = float(diffusion.alphas_cumprod[step])
    return math.sqrt(ab), math.sqrt((1.0 - ab) / ab)


@torch.no_grad()
def step_costs(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    candidates: Sequence[int],
    x_T: torch.Tensor,
    form: str = "euler",
    refine: int = 4,
    clip_denoised: bool = True,
    progress: Callable[[int], None] | None = None,
    batch: int = 1024,
) -> StepCosts:
    """The cost matrix of the module docstring for starting points x_T [M, C, H, W].

    model_fn(x, t) takes base steps t (the unspaced model); candidates: increasing base
    steps, the last the start; form: the one-step form ("euler" or "trapezoid"). Network calls:
    N (+ the fine solve) for "euler", up to N + N(N−1)/2 for "trapezoid" (in batches of `batch`
    images). progress(n) after each candidate. Returns float64 costs on the CPU.
    """
    if form not in FORMS:
        raise ValueError(f"unknown one-step form {form!r}; use one of {', '.join(FORMS)}")
    steps = [int(s) for s in candidates]
    n = len(steps)
    ref, final = reference_states(model_fn, diffusion, steps, x_T, refine, clip_denoised)
    d = x_T[0].numel() * x_T.shape[0]

    def x0_at(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x̂0 of the images x [B, ...] at base steps t [B], in chunks of `batch` images."""
        parts = []
        for lo in range(0, x.shape[0], batch):
            xb, tb = x[lo : lo + batch], t[lo : lo + batch]
            out = diffusion.p_mean_variance(model_fn(xb, tb), xb, tb, clip_denoised=clip_denoised)
            parts.append(out.pred_x0)
        return torch.cat(parts)

    m = x_T.shape[0]
    amp = torch.tensor([_levels(diffusion, g)[0] for g in steps], dtype=torch.float64)
    sig = torch.tensor([_levels(diffusion, g)[1] for g in steps], dtype=torch.float64)
    local = torch.full((n, n), math.inf, dtype=torch.float64)
    final_cost = torch.empty(n, dtype=torch.float64)
    for j, g in enumerate(steps):
        x0_j = x0_at(ref[j], torch.full((m,), g, dtype=torch.int64, device=x_T.device))
        final_cost[j] = float((x0_j - final).double().pow(2).sum()) / d
        if j > 0:
            xbar = ref[j] / float(amp[j])
            eps = (xbar - x0_j) / float(sig[j])  # dx̄/dσ at g_j
            h = (sig[:j] - sig[j]).to(x_T.dtype).to(x_T.device).reshape(j, *[1] * x_T.ndim)
            a = amp[:j].to(x_T.dtype).to(x_T.device).reshape(j, *[1] * x_T.ndim)
            guess = xbar.unsqueeze(0) + h * eps.unsqueeze(0)  # [j, M, …] Euler to each g_i
            # Heun's trapezoid, except where it takes an Euler step (sigma_solvers.heun_loop)
            near = int((sig[:j] * HEUN_MAX_RATIO >= sig[j]).to(torch.int64).argmax())
            if form == "trapezoid" and bool(sig[near] * HEUN_MAX_RATIO >= sig[j]):
                n_i = j - near
                g, hh = guess[near:], h[near:]
                t = torch.tensor(steps[near:j], device=x_T.device).repeat_interleave(m)
                x0_i = x0_at((a[near:] * g).reshape(n_i * m, *x_T.shape[1:]), t).reshape(g.shape)
                s_i = sig[near:j].to(x_T.dtype).to(x_T.device).reshape(hh.shape)
                g = xbar.unsqueeze(0) + (0.5 * hh) * (eps.unsqueeze(0) + (g - x0_i) / s_i)
                guess = torch.cat([guess[:near], g])
            err = (a * guess - torch.stack(ref[:j])).double().pow(2)
            local[j, :j] = err.reshape(j, -1).sum(1).cpu() / d
        if progress is not None:
            progress(j + 1)
    return StepCosts(steps, local, final_cost)


__all__ = [
    "FORMS",
    "StepCosts",
    "brute_force_path",
    "default_candidates",
    "optimal_path",
    "path_error",
    "reference_states",
    "step_costs",
]
