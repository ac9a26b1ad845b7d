"""The whole bound (docs/paper.md P10, P12) on data whose answer is known exactly.

Tools:
- Oracle denoisers from conftest: the exact Gaussian reverse step (moment matched) for
  Gaussian data or for data uniform on a few grid points.
- `expected_terms`: E over the noise of every term L_t of one image, by Gauss–Hermite
  quadrature. Both oracles act elementwise, so each dimension's term depends on its own
  ε only; feeding ε = z_q in every dimension and weighting by the quadrature weights gives
  the mean over dimensions of E_ε[L_t] exactly (for the Gaussian oracle the KL terms are
  quadratic in ε, so the rule is exact; elsewhere 32 nodes agree with 128 to ~1e-9 bits).
  The per-image bits/dim that `bits_per_dim` reports with one noise draw per term is an
  unbiased sample of this expectation.

What is proved:
1. For Gaussian data the KL part of the bound has a closed form given x0 (derived below)
   and the quadrature of `vb_term_bits` reproduces it for every schedule, mean and
   variance type.
2. `bits_per_dim` is an unbiased sample of that expectation (replicates of one image).
3. Data uniform on m grid values per dimension has entropy log2(m) bits/dim exactly. The
   oracle's expected bound is >= that entropy and the gap shrinks as T grows (T = 100,
   1000, 4000); `bits_per_dim` over N images lands on log2(m) within
   5·stderr + gap(T), the gap being the quadrature value (the bound's own slack).
4. `estimate_bits_per_dim` is unbiased for every method, and its stderr is calibrated
   (importance) or conservative (stratified).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import discrete_oracle, gaussian_oracle
from iddpm.diffusion import schedules
from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType, VarType
from iddpm.diffusion.likelihood import bits_per_dim, normal_kl, prior_bits, vb_term_bits
from iddpm.diffusion.likelihood_mc import estimate_bits_per_dim

LN2 = math.log(2.0)
Z_SIGMA = 5.0  # tolerance in standard errors for every Monte-Carlo comparison


def level(k: int | list[int]) -> torch.Tensor:
    """uint8 level(s) k -> the model range k/127.5 − 1, float64."""
    return torch.as_tensor(k, dtype=torch.float64) / 127.5 - 1.0


def expected_terms(
    model_fn, diffusion: GaussianDiffusion, x0: torch.Tensor, clip_denoised: bool, nodes: int = 32
) -> torch.Tensor:
    """E_ε[L_t] for one image x0 [1, C, H, W] and every step t, bits/dim: [T] float64.

    Requires a model whose output at a dimension depends only on x_t at that dimension.
    """
    z, w = np.polynomial.hermite_e.hermegauss(nodes)  # weight e^{−z²/2}
    z = torch.tensor(z, dtype=x0.dtype)
    w = torch.tensor(w / math.sqrt(2.0 * math.pi), dtype=torch.float64)
    num_t, out = diffusion.num_timesteps, torch.empty(diffusion.num_timesteps, dtype=torch.float64)
    chunk = max(1, 400_000 // (nodes * x0.numel()))
    for start in range(0, num_t, chunk):
        steps = torch.arange(start, min(start + chunk, num_t))
        t = steps.repeat_interleave(nodes)
        x0_rep = x0.expand(t.shape[0], *x0.shape[1:])
        noise = z.repeat(len(steps)).reshape(-1, *[1] * (x0.ndim - 1)).expand_as(x0_rep)
        x_t = diffusion.q_sample(x0_rep, t, noise)
        terms = vb_term_bits(diffusion, model_fn(x_t, t), x0_rep, x_t, t, clip_denoised)
        out[steps] = (terms["output"].double().reshape(len(steps), nodes) * w).sum(1)
    return out


def expected_bound(model_fn, diffusion, x0, clip_denoised: bool) -> float:
    """E_ε of `bits_per_dim(...).total_bpd` for one image [1, C, H, W]."""
    terms = expected_terms(model_fn, diffusion, x0, clip_denoised)
    return float(terms.sum() + prior_bits(diffusion, x0).double().sum())


def _diffusion(schedule: str, T: int, var_type=VarType.LEARNED, mean_type=MeanType.EPSILON):
    return GaussianDiffusion(schedules.get(schedule, T), mean_type, var_type)


# ---------------------------------------------------------------------- 1. Gaussian data
def gaussian_kl_part_closed_form(diffusion, x0: torch.Tensor, mu: float, s: float) -> float:
    """E_ε[Σ_{t≥1} L_t + L_T | x0] in bits/dim when p_θ is the exact reverse process of
    data N(mu, s²) (prior p(x_T) = N(0, I)).

    With p(x_{1:T}) = q(x_{1:T})·N(x_T)/q(x_T) (paper's indices), the sum of the KL terms
    and the prior is E_{q(x_{1:T}|x0)} log[q(x_{1:T}|x0)/p(x_{1:T})]
      = KL(q(x_1|x0) ‖ q(x_1)) + E_{q(x_T|x0)} log[q(x_T)/N(x_T; 0, 1)],
    because x_{2:T} depends on x0 only through x_1. Both pieces are Gaussian integrals.
    """
    a1, a_last = diffusion.alphas_cumprod[0], diffusion.alphas_cumprod[-1]
    x0 = x0.double()
    v1 = a1 * s**2 + 1 - a1  # Var of q(x_1)
    kl1 = normal_kl(a1.sqrt() * x0, torch.log(1 - a1), a1.sqrt() * mu, torch.log(v1))
    v_last = a_last * s**2 + 1 - a_last  # Var of q(x_T)
    e_dev2 = a_last * (x0 - mu) ** 2 + 1 - a_last  # E[(x_T − √ᾱ mu)²]
    e_sq = a_last * x0**2 + 1 - a_last  # E[x_T²]
    cross = -0.5 * torch.log(v_last) - e_dev2 / (2 * v_last) + e_sq / 2
    return float((kl1 + cross).mean() / LN2)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("var_type", [VarType.LEARNED, VarType.LEARNED_RANGE])
@pytest.mark.parametrize("mean_type", list(MeanType))
def test_gaussian_kl_terms_match_the_closed_form(schedule, var_type, mean_type) -> None:
    d = _diffusion(schedule, 30, var_type, mean_type)
    mu, s = 0.1, 0.5
    x0 = level([0, 102, 178, 255]).reshape(1, 1, 2, 2)
    terms = expected_terms(gaussian_oracle(d, mu, s), d, x0, clip_denoised=False)
    got = float(terms[1:].sum() + prior_bits(d, x0).double().sum())
    assert got == pytest.approx(gaussian_kl_part_closed_form(d, x0, mu, s), rel=1e-10)


def test_bits_per_dim_is_an_unbiased_sample_of_the_expected_bound() -> None:
    d = _diffusion("cosine", 60, VarType.LEARNED_RANGE)
    model = gaussian_oracle(d, 0.0, 0.5)
    x0 = level([10, 128, 200, 254]).reshape(1, 1, 2, 2)
    want = expected_bound(model, d, x0, clip_denoised=True)
    reps = 400
    r = bits_per_dim(
        model,
        d,
        x0.expand(reps, 1, 2, 2),
        timestep_batch=30,
        generator=torch.Generator().manual_seed(0),
    )
    se = r.total_bpd.std().item() / math.sqrt(reps)
    assert abs(r.total_bpd.mean().item() - want) < Z_SIGMA * se
    # The decoder term L_0 is part of it: without it the mean misses by far more.
    assert abs(r.total_bpd.mean().item() - want) < 0.2 * float(r.vb_bpd[:, 0].mean())


# ---------------------------------------------------------------------- 3. discrete data
TWO_POINTS = [64, 191]  # ±0.498 on the grid: interior bins, 1 bit/dim
FOUR_POINTS = [0, 85, 170, 255]  # includes both open edge bins, 2 bits/dim


def _discrete_expected(points: list[int], T: int, var_type=VarType.LEARNED) -> float:
    d = _diffusion("cosine", T, var_type)
    pts = level(points)
    # One dimension per support point: the mean over dimensions is the mean over the data.
    return expected_bound(discrete_oracle(d, pts), d, pts.reshape(1, 1, 1, -1), True)


@pytest.mark.slow
def test_discrete_oracle_bound_exceeds_the_entropy_and_tightens_as_T_grows() -> None:
    b = {T: _discrete_expected(TWO_POINTS, T) for T in (100, 1000, 4000)}
    # E[L_vlb] >= E[−log p_θ(x0)] >= H(data) = 1 bit/dim; the moment-matched Gaussian
    # reverse steps get exact as the steps shrink, so the gap falls with T.
    assert 1.0 <= b[4000] < b[1000] < b[100]
    assert b[4000] - 1.0 < 1e-4
    b4 = {T: _discrete_expected(FOUR_POINTS, T, VarType.LEARNED_RANGE) for T in (100, 1000)}
    assert 2.0 <= b4[1000] < b4[100]


@pytest.mark.slow
@pytest.mark.parametrize(
    "points,T,var_type",
    [(TWO_POINTS, 1000, VarType.LEARNED), (FOUR_POINTS, 250, VarType.LEARNED_RANGE)],
)
def test_bits_per_dim_on_discrete_oracle_lands_on_the_entropy(points, T, var_type) -> None:
    d = _diffusion("cosine", T, var_type)
    pts = level(points)
    entropy = math.log2(len(points))
    gap = _discrete_expected(points, T, var_type) - entropy
    n = 128
    g = torch.Generator().manual_seed(1)
    x0 = pts[torch.randint(0, len(points), (n, 1, 2, 2), generator=g)]
    r = bits_per_dim(discrete_oracle(d, pts), d, x0, timestep_batch=250, generator=g)
    mean, se = r.total_bpd.mean().item(), r.total_bpd.std().item() / math.sqrt(n)
    assert 0.0 <= gap < 0.01  # the bound's own slack at this T (quadrature)
    assert abs(mean - entropy) <= Z_SIGMA * se + gap
    assert mean >= entropy - Z_SIGMA * se
    assert (r.vb_bpd[:, 0].abs() < 1e-6).all(), "the oracle's decoder puts all mass on x0"


def test_monte_carlo_bound_on_discrete_oracle_at_T4000_lands_on_one_bit() -> None:
    d = _diffusion("cosine", 4000, VarType.LEARNED)
    pts = level(TWO_POINTS)
    g = torch.Generator().manual_seed(2)
    x0 = pts[torch.randint(0, 2, (64, 1, 2, 2), generator=g)]
    r = estimate_bits_per_dim(
        discrete_oracle(d, pts), d, x0, num_samples_per_image=64, timestep_batch=64, generator=g
    )
    gap = 1e-4  # >= the expected gap at T=4000 (6.8e-6; asserted in the tightening test)
    assert abs(r.total_bpd.mean().item() - 1.0) <= Z_SIGMA * r.mean_stderr + gap


# ---------------------------------------------------------------------- 4. Monte-Carlo bound
@pytest.mark.parametrize(
    "method,k,probs",
    [
        ("stratified", 4, None),
        ("stratified", 5, None),  # 24 steps in strata of sizes 4, 5, 5, 5, 5
        ("log-stratified", 5, None),  # strata of sizes 1, 2, 3, 6, 12
        ("importance", 3, None),
        ("importance", 6, "ramp"),
    ],
)
def test_monte_carlo_bound_is_unbiased_with_calibrated_stderr(method, k, probs) -> None:
    d = _diffusion("cosine", 24, VarType.LEARNED_RANGE)
    model = gaussian_oracle(d, 0.0, 0.5)
    images = [level([3, 128, 200, 250]), level([0, 0, 255, 255]), level([120, 140, 60, 90])]
    if probs == "ramp":  # more mass on early steps, where the terms are largest
        p = torch.linspace(3.0, 1.0, 24, dtype=torch.float64)
        probs = p / p.sum()
    reps = 1500
    g = torch.Generator().manual_seed(3)
    for img in images:
        x0 = img.reshape(1, 1, 2, 2)
        want = expected_bound(model, d, x0, clip_denoised=True)
        r = estimate_bits_per_dim(
            model,
            d,
            x0.expand(reps, 1, 2, 2),
            num_samples_per_image=k,
            method=method,
            probs=probs,
            generator=g,
            timestep_batch=4,
        )
        emp_var = r.total_bpd.var().item()
        assert abs(r.total_bpd.mean().item() - want) < Z_SIGMA * math.sqrt(emp_var / reps)
        ratio = r.stderr.pow(2).mean().item() / emp_var
        if method == "importance":
            assert 0.8 < ratio < 1.25, ratio  # unbiased variance estimate
        else:
            assert ratio > 0.8, ratio  # collapsed strata: conservative


def test_monte_carlo_and_full_evaluation_agree_in_expectation() -> None:
    d = _diffusion("linear", 40, VarType.LEARNED)
    model = gaussian_oracle(d, 0.2, 0.3)
    x0 = level([40, 90, 140, 190]).reshape(1, 1, 2, 2).expand(600, 1, 2, 2)
    g = torch.Generator().manual_seed(4)
    full = bits_per_dim(model, d, x0, generator=g, timestep_batch=40).total_bpd
    mc = estimate_bits_per_dim(model, d, x0, num_samples_per_image=8, generator=g).total_bpd
    se = math.sqrt(full.var().item() / len(full) + mc.var().item() / len(mc))
    assert abs(full.mean().item() - mc.mean().item()) < Z_SIGMA * se
