"""Terms of the variational bound in explicit units, and bits/dim (docs/paper.md P10, P12).

Units are in the names: `*_nats` are natural-log units, `*_bits` and `*_bpd` are bits per
dimension (nats / (D·ln 2), P12). Code step t ∈ {0, …, T−1} is the paper's step t+1, so
the term stored at code step t is the paper's L_t (KL at t ≥ 1, the decoder NLL L_0 at
t = 0) and the prior term is L_T.

`bits_per_dim` evaluates all T terms of one image with one noise draw per term, several
timesteps per network call; `likelihood_mc.estimate_bits_per_dim` is an unbiased
Monte-Carlo estimate of the same bound from K sampled steps per image (stratified or
importance-sampled), with a standard error.

Randomness (`generator=`, the `Generators` type): one generator per image (a sequence,
e.g. `samplers.per_sample_generators(seed, global_indices)`) makes image i's noise at
step t a function of (its generator's seed, t) alone, so per-image results do not depend
on the batch an image is evaluated in, the number of ranks or `timestep_batch`. Image i's
noise for steps [jB, jB + B) is its generator's j-th draw of shape [B, C, H, W]
(B = NOISE_BLOCK, blocks in increasing order; one call per B steps keeps the cost of
per-image streams small). A single generator for the whole batch is the older rule: step
t's noise is its (t+1)-th draw of x0's shape, which depends on the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from iddpm._tensor import check_same_shape, mean_flat
from iddpm.diffusion.gaussian import GaussianDiffusion

ModelFn = Callable[..., torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None
LN2 = math.log(2.0)
# Steps of one image's noise drawn per call of its own generator (see the module docstring).
NOISE_BLOCK = 64
# Probability floor of the decoder (the reference's 1e-12): caps one dimension's NLL at
# −log(1e-12) ≈ 27.6 nats, so a hopeless decoder cannot produce inf or NaN gradients.
PROB_FLOOR = 1e-12
_BIN_HALF_WIDTH = 1.0 / 255.0  # uint8 levels are 2/255 apart on the [−1, 1] scale
# Max |tanh approximation − Φ| over the real line, measured on a 1e-5 grid over [−10, 10]
# in float64 (attained at |x| ≈ 2.59); see `approx_standard_normal_cdf`.
TANH_CDF_MAX_ABS_ERROR = 1.79e-4
# Standardised bin edges are clamped to ±_Z_MAX: beyond it Φ is < 1e-300, far below the
# floor, and log Φ's backward in float32 is wrong (and in float64 infinite) for |z| ≳ 1e3.
_Z_MAX = 40.0
_SQRT_HALF = math.sqrt(0.5)


# ---------------------------------------------------------------------- elementwise math
def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) in nats, elementwise, broadcasting (P10).

    Written as ½[(e^δ − 1 − δ) + (mean1 − mean2)² e^{−logvar2}] with δ = logvar1 − logvar2,
    using expm1, so near-equal variances (the common case for late steps) do not cancel
    to float32 noise.
    """
    delta = logvar1 - logvar2
    return 0.5 * (torch.expm1(delta) - delta + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) = ½·erfc(−x/√2), accurate to float resolution in both tails.

    (torch.special.ndtr goes through erf and loses the lower tail: ~2% error at x = −8.)
    """
    return 0.5 * torch.special.erfc(-x * _SQRT_HALF)


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The reference's tanh approximation ½(1 + tanh(√(2/π)(x + 0.044715x³))).

    Its absolute error is at most TANH_CDF_MAX_ABS_ERROR (≈1.8e-4, at |x| ≈ 2.6); its
    relative error in the far tails is large, which is why `exact=True` is the default.
    """
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _log_cdf_diff_exact(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Φ(hi) − Φ(lo)) for lo < hi, stable everywhere.

    A bin in the upper tail is mirrored to the lower tail (Φ(hi) − Φ(lo) = Φ(−lo) − Φ(−hi)),
    where log Φ is accurate; then log(Φ(b) − Φ(a)) = log Φ(b) + log(−expm1(log Φ(a) − log Φ(b))).
    """
    upper = (lo + hi) > 0
    a = torch.where(upper, -hi, lo)
    b = torch.where(upper, -lo, hi)
    log_b = torch.special.log_ndtr(b)
    # This clamp bites only when the two edges coincide in float resolution: both beyond
    # _Z_MAX (mass far below the floor), or σ ≳ 1e5 bin widths in float32.
    frac = (-torch.expm1(torch.special.log_ndtr(a) - log_b)).clamp_min(torch.finfo(a.dtype).tiny)
    return log_b + torch.log(frac)


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, exact: bool = True
) -> torch.Tensor:
    """log P(bin of x) under N(means, e^{2·log_scales}) in nats, elementwise (P10's decoder).

    x: [N, ...] on the uint8 grid k/127.5 − 1 (a precondition, not checked here: see
    `check_uint8_grid`); means, log_scales (log σ, not log σ²): broadcastable to x.
    The bin is [x − 1/255, x + 1/255]; the edge bins (x = −1, x = +1) are open to −∞/+∞,
    so the 256 probabilities of one σ sum to 1. Probabilities are floored at 1e-12.

    exact=True: log Φ (torch.special.log_ndtr) in log-CDF, log-survival and mirrored
    difference forms (`_log_cdf_diff_exact`); accurate to float resolution in every bin,
    tails included.
    exact=False: the reference's tanh CDF with its clamps, for bit-for-bit comparisons;
    each bin's probability is then off by at most 2·TANH_CDF_MAX_ABS_ERROR ≈ 3.6e-4
    (relative error can be large for improbable bins). Returns x's shape, in the
    promoted dtype of the inputs.
    """
    inv_stdv = torch.exp(-log_scales)
    centered = x - means
    hi = (inv_stdv * (centered + _BIN_HALF_WIDTH)).clamp(-_Z_MAX, _Z_MAX)
    lo = (inv_stdv * (centered - _BIN_HALF_WIDTH)).clamp(-_Z_MAX, _Z_MAX)
    floor = math.log(PROB_FLOOR)
    if exact:
        log_cdf_hi = torch.special.log_ndtr(hi)  # left edge bin: P = Φ(hi)
        log_sf_lo = torch.special.log_ndtr(-lo)  # right edge bin: P = 1 − Φ(lo)
        log_mid = _log_cdf_diff_exact(lo, hi)
        out = torch.where(x < -0.999, log_cdf_hi, torch.where(x > 0.999, log_sf_lo, log_mid))
        return out.clamp_min(floor)
    cdf_hi = approx_standard_normal_cdf(hi)
    cdf_lo = approx_standard_normal_cdf(lo)
    log_cdf_hi = torch.log(cdf_hi.clamp_min(PROB_FLOOR))
    log_sf_lo = torch.log((1.0 - cdf_lo).clamp_min(PROB_FLOOR))
    log_mid = torch.log((cdf_hi - cdf_lo).clamp_min(PROB_FLOOR))
    return torch.where(x < -0.999, log_cdf_hi, torch.where(x > 0.999, log_sf_lo, log_mid))


def check_uint8_grid(x0: torch.Tensor) -> None:
    """One-line ValueError unless every value of x0 is k/127.5 − 1 for an integer k in [0, 255]."""
    level = (x0.detach().to(torch.float64) + 1.0) * 127.5
    bad = (level < -1e-3) | (level > 255 + 1e-3) | ((level - level.round()).abs() > 1e-3)
    if bool(bad.any()):
        raise ValueError(
            "x0 is not on the uint8 grid k/127.5 − 1 in [−1, 1]; the discrete decoder's bins "
            "need images mapped from uint8 with x/127.5 − 1 (no dequantisation noise)"
        )


# ---------------------------------------------------------------------- terms of the bound
def vb_term_bits(
    diffusion: GaussianDiffusion,
    model_output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    clip_denoised: bool = True,
    *,
    exact: bool = True,
) -> dict[str, torch.Tensor]:
    """One term of L_vlb per example, in bits per dimension (P10, P12).

    model_output: [N, C or 2C, H, W]; x0, x_t: [N, C, H, W] (x0 on the uint8 grid);
    t: [N] int64. Returns {"output": [N] — KL(q(x_{t−1}|x_t, x0) ‖ p_θ(x_{t−1}|x_t)) mean
    over dimensions for t > 0 and, replacing it at t = 0, the decoder NLL −log p_θ(x0|x_1)
    (bin mass, `exact` CDF); "pred_x0": [N, C, H, W]}. Both in x_t's dtype.
    """
    check_same_shape("x0", x0, "x_t", x_t)
    true_mean, _, true_log_var = diffusion.q_posterior(x0, x_t, t)
    out = diffusion.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
    kl = mean_flat(normal_kl(true_mean, true_log_var, out.mean, out.log_variance)) / LN2
    log_lik = discretized_gaussian_log_likelihood(x0, out.mean, 0.5 * out.log_variance, exact=exact)
    decoder_nll = -mean_flat(log_lik) / LN2
    # t = 0 corner case: the decoder term L_0 replaces the KL (β̃ = 0 there).
    return {"output": torch.where(t == 0, decoder_nll, kl), "pred_x0": out.pred_x0}


def prior_bits(diffusion: GaussianDiffusion, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x0) ‖ N(0, I)), mean over dimensions, in bits (P10). x0: [N, ...] -> [N]."""
    t = torch.full((x0.shape[0],), diffusion.num_timesteps - 1, dtype=torch.long, device=x0.device)
    mean, _, log_var = diffusion.q_mean_variance(x0, t)
    zero = torch.zeros((), dtype=mean.dtype, device=mean.device)
    return mean_flat(normal_kl(mean, log_var, zero, zero)) / LN2


# ---------------------------------------------------------------------- shared evaluation
def _draw(kind: str, shape: tuple[int, ...], like: torch.Tensor, generator: Any) -> torch.Tensor:
    """randn/rand on the generator's device (x0's device without one), moved to x0's device."""
    device = generator.device if generator is not None else like.device
    fn = torch.randn if kind == "normal" else torch.rand
    dtype = like.dtype if kind == "normal" else torch.float64
    return fn(shape, generator=generator, device=device, dtype=dtype).to(like.device)


def per_image(generator: Generators, n: int) -> Sequence[torch.Generator] | None:
    """The per-image generators in `generator`, or None for a single (or no) generator.
    A sequence must hold one generator per image (one-line ValueError otherwise)."""
    if generator is None or isinstance(generator, torch.Generator):
        return None
    gens = list(generator)
    if len(gens) != n:
        raise ValueError(
            f"got {len(gens)} generators for {n} images; pass one generator per image "
            "(see samplers.per_sample_generators) or a single generator"
        )
    return gens


class StepNoise:
    """Standard-normal noise of x0's shape for consecutive steps 0, 1, 2, … (module docstring).

    `take(k)` returns the next k steps' noise as [k, N, C, H, W] in x0's dtype on x0's
    device. With per-image generators the draws are made in blocks of NOISE_BLOCK steps,
    so the result does not depend on how the steps are split into `take` calls.
    """

    def __init__(self, generator: Generators, like: torch.Tensor) -> None:
        self._like = like
        self._single = generator if isinstance(generator, torch.Generator) else None
        self._gens = per_image(generator, like.shape[0])
        self._block: torch.Tensor | None = None  # [N, B, C, H, W] of the current block
        self._pos = NOISE_BLOCK

    def _refill(self) -> None:
        assert self._gens is not None
        shape = (NOISE_BLOCK, *self._like.shape[1:])
        dtype = self._like.dtype
        rows = [torch.randn(shape, generator=g, device=g.device, dtype=dtype) for g in self._gens]
        self._block = torch.stack(rows).to(self._like.device)
        self._pos = 0

    def take(self, k: int) -> torch.Tensor:
        if self._gens is None:
            shape = tuple(self._like.shape)
            return torch.stack([_draw("normal", shape, self._like, self._single) for _ in range(k)])
        parts = []
        while k > 0:
            if self._pos == NOISE_BLOCK:
                self._refill()
            assert self._block is not None
            m = min(k, NOISE_BLOCK - self._pos)
            parts.append(self._block[:, self._pos : self._pos + m])
            self._pos, k = self._pos + m, k - m
        return torch.cat(parts, dim=1).transpose(0, 1)


def _repeat_kwargs(model_kwargs: dict[str, Any] | None, k: int, n: int) -> dict[str, Any]:
    """Tile per-example tensors (first dim n) k times to match the [k·N] replicated batch."""
    out: dict[str, Any] = {}
    for name, v in (model_kwargs or {}).items():
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            if v.shape[0] != n:
                raise ValueError(
                    f"model_kwargs[{name!r}] has {v.shape[0]} rows for {n} images; "
                    "pass one row per image"
                )
            v = v.repeat(k, *([1] * (v.ndim - 1)))
        out[name] = v
    return out


def _slice_kwargs(model_kwargs: dict[str, Any] | None, lo: int, n: int) -> dict[str, Any]:
    """Per-image tensors of model_kwargs (indexed by global image number) for one batch."""
    out = {}
    for name, v in (model_kwargs or {}).items():
        out[name] = v[lo : lo + n] if isinstance(v, torch.Tensor) and v.ndim > 0 else v
    return out


@dataclass
class NoisedBlock:
    """One network call of a traversal: images lo … lo+n−1 (`x0` [n, C, H, W]) each noised
    at k steps (`t_cols` [n, k]) and run through the model. The replicated batch puts
    column c first: row c·n + i is image i at t_cols[i, c]. `x0_rep`, `t`, `noise`, `x_t`
    and `output` are [k·n, …]; `last`: the block ends its batch's traversal."""

    lo: int
    x0: torch.Tensor
    t_cols: torch.Tensor
    x0_rep: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    x_t: torch.Tensor
    output: torch.Tensor
    last: bool = False

    @property
    def n(self) -> int:
        return int(self.t_cols.shape[0])

    @property
    def k(self) -> int:
        return int(self.t_cols.shape[1])

    def columns(self, v: torch.Tensor) -> torch.Tensor:
        """A per-row value [k·n] as [n, k] float64 (column c = step column c)."""
        return v.to(torch.float64).reshape(self.k, self.n).t()


def noised_forward(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    t_cols: torch.Tensor,
    noise: torch.Tensor,
    model_kwargs: dict[str, Any] | None,
    lo: int = 0,
) -> NoisedBlock:
    """The rule every bound, statistic and cost evaluation shares, written once: replicate
    the n images k times, x_t = q_sample(x0, t, noise) and ONE network call on n·k inputs.
    t_cols: [n, k] int64; noise: [k, n, C, H, W], row c the noise of column c;
    model_kwargs: per-image tensors (first dim n), tiled to the replicated batch."""
    n, k = t_cols.shape
    assert noise.shape == (k, *x0.shape), (tuple(noise.shape), k, tuple(x0.shape))
    x0_rep = x0.unsqueeze(0).expand(k, *x0.shape).reshape(k * n, *x0.shape[1:])
    t = t_cols.t().reshape(-1)  # block c = all n images at column c
    noise = noise.reshape(k * n, *x0.shape[1:])
    x_t = diffusion.q_sample(x0_rep, t, noise)
    output = model_fn(x_t, t, **_repeat_kwargs(model_kwargs, k, n))
    return NoisedBlock(lo, x0, t_cols, x0_rep, t, noise, x_t, output)


def image_batches(
    x0: torch.Tensor | Iterable[torch.Tensor],
    batch_size: int,
    generators: Callable[[range], Generators],
) -> Iterator[tuple[int, torch.Tensor, Generators]]:
    """(global index of the first image, batch, its generators) over a tensor [M, …] split
    into `batch_size` batches, or over an iterable of batches; generators(range of global
    indices) gives each batch's (e.g. `samplers.per_sample_generators(seed, indices)`)."""
    batches: Iterable[torch.Tensor] = (
        (x0[lo : lo + batch_size] for lo in range(0, x0.shape[0], batch_size))
        if isinstance(x0, torch.Tensor)
        else x0
    )
    lo = 0
    for batch in batches:
        n = batch.shape[0]
        yield lo, batch, generators(range(lo, lo + n))
        lo += n


def traverse(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    batches: Iterable[tuple[int, torch.Tensor, Generators]],
    *,
    timestep_batch: int,
    model_kwargs: dict[str, Any] | None = None,
    by_index: bool = True,
) -> Iterator[NoisedBlock]:
    """Every step of the process for every image: (image batch × block of `timestep_batch`
    consecutive steps), one network call each (`noised_forward`), in order. batches:
    (global index of the first image, images, their generators), e.g. `image_batches`;
    noise follows the module's rule (`StepNoise`), so results do not depend on the
    batching; per-image tensors of model_kwargs are indexed by the global image number
    (`by_index`; else each batch takes them whole, one row per image)."""
    num_t = diffusion.num_timesteps
    for lo, batch, generators in batches:
        n = batch.shape[0]
        noise = StepNoise(generators, batch)
        kwargs = _slice_kwargs(model_kwargs, lo, n) if by_index else model_kwargs
        for start in range(0, num_t, timestep_batch):
            steps = torch.arange(start, min(start + timestep_batch, num_t), device=batch.device)
            t_cols = steps.unsqueeze(0).expand(n, -1)
            block = noised_forward(
                model_fn, diffusion, batch, t_cols, noise.take(len(steps)), kwargs, lo
            )
            block.last = start + timestep_batch >= num_t
            yield block


def _block_terms(
    diffusion: GaussianDiffusion, block: NoisedBlock, clip_denoised: bool, exact: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(vb bits, ε-MSE, x0-MSE) of a block, each [n, k] float64."""
    terms = vb_term_bits(
        diffusion, block.output, block.x0_rep, block.x_t, block.t, clip_denoised, exact=exact
    )
    # The ε implied by the (clipped) x̂0, as the reference reports it.
    eps = diffusion.predict_eps_from_x0(block.x_t, block.t, terms["pred_x0"])
    return (
        block.columns(terms["output"]),
        block.columns(mean_flat((eps - block.noise) ** 2)),
        block.columns(mean_flat((terms["pred_x0"] - block.x0_rep) ** 2)),
    )


def _eval_columns(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    t_cols: torch.Tensor,
    noise: torch.Tensor,
    clip_denoised: bool,
    model_kwargs: dict[str, Any] | None,
    exact: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Evaluate k timesteps per image with ONE network call on N·k inputs.

    t_cols: [N, k] int64, column c holds each image's step; noise: [k, N, C, H, W], row c
    the noise of column c. Returns (vb bits, ε-MSE, x0-MSE), each [N, k] float64.
    """
    block = noised_forward(model_fn, diffusion, x0, t_cols, noise, model_kwargs)
    return _block_terms(diffusion, block, clip_denoised, exact)


def _check_inputs(diffusion: GaussianDiffusion, x0: torch.Tensor, timestep_batch: int) -> None:
    if x0.ndim < 2 or x0.shape[0] < 1:
        raise ValueError(f"x0 must be a non-empty batch [N, C, ...], got {tuple(x0.shape)}")
    if not isinstance(timestep_batch, int) or timestep_batch < 1:
        raise ValueError(f"timestep_batch must be an integer >= 1, got {timestep_batch!r}")
    check_uint8_grid(x0)


# ---------------------------------------------------------------------- the full bound
@dataclass
class BpdResult:
    """The full bound per image, bits per dimension, float64 on x0's device (P10, P12).

    total_bpd [N] = prior_bpd + vb_bpd.sum(1); prior_bpd [N] = L_T; vb_bpd [N, T]: column t
    is code step t (column 0 = decoder NLL L_0); mse, x0_mse [N, T]: ε- and x0-MSE of the
    prediction at each step (mean over dimensions).
    """

    total_bpd: torch.Tensor
    prior_bpd: torch.Tensor
    vb_bpd: torch.Tensor
    mse: torch.Tensor
    x0_mse: torch.Tensor


@torch.no_grad()
def bits_per_dim(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    *,
    clip_denoised: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    timestep_batch: int = 16,
    generator: Generators = None,
    progress: Callable[[int, int], None] | None = None,
    exact: bool = True,
) -> BpdResult:
    """All T terms of L_vlb for each image, plus the prior (P10, P12); no gradients.

    x0: [N, C, H, W] on the uint8 grid. model_fn(x_t, t, **model_kwargs) with t the index
    of *this* process (wrap respaced models in their adapter); per-image tensors in
    model_kwargs are tiled to the replicated batch. Steps are evaluated `timestep_batch`
    at a time: the N images are replicated k times with k different t, one call on N·k
    inputs. generator: one per image (image i's result then depends only on its own
    generator) or one for the batch; the noise rule is in the module docstring, and in
    both cases results do not depend on `timestep_batch`.
    `progress(done, T)` is called after each network call.
    """
    _check_inputs(diffusion, x0, timestep_batch)
    n, num_t = x0.shape[0], diffusion.num_timesteps
    vb, mse, x0_mse = (
        torch.empty(n, num_t, dtype=torch.float64, device=x0.device) for _ in range(3)
    )
    blocks = traverse(
        model_fn,
        diffusion,
        [(0, x0, generator)],
        timestep_batch=timestep_batch,
        model_kwargs=model_kwargs,
        by_index=False,
    )
    for block in blocks:
        steps = block.t_cols[0]
        for table, value in zip(
            (vb, mse, x0_mse), _block_terms(diffusion, block, clip_denoised, exact)
        ):
            table[:, steps] = value
        if progress is not None:
            progress(int(steps[-1]) + 1, num_t)
    prior = prior_bits(diffusion, x0).to(torch.float64)
    return BpdResult(prior + vb.sum(dim=1), prior, vb, mse, x0_mse)
