"""Training losses: L_simple, L_hybrid and L_vlb, per example (docs/paper.md P9, P11, P13).

Where λ goes (the paper's most asked question). L_vlb = L_0 + L_1 + … + L_{T−1} + L_T is
a *sum* of T terms (code steps 0…T−1, plus the parameter-free prior). Training draws one
step t per example, uniformly, so T·L_t is an unbiased single-sample estimate of the
sum: E_t[T·L_t] = Σ_t L_t. The hybrid objective L_simple + λ·L_vlb with λ = 0.001 is
therefore estimated per example by

    mse + λ·T·L_t = mse + (T/1000)·L_t,

which is what the reference code computes under the name RESCALED_MSE (`vb · T/1000`).
Averaging (T/1000)·L_t over all t gives exactly 0.001·Σ_t L_t. L_t is measured in bits
per dimension (`vb_term_bits`), as the authors do. With importance sampling (P13) the
trainer multiplies the per-example loss by 1/(T·p_t), which keeps the same scale.

Stop-gradient (P11): inside the hybrid's vb term the mean channels are detached and the
variance channels stay live, so the vb term trains only Σ_θ. The vb term never clips x̂0
during training (as in the reference). Losses are returned per example [N]; weighting
and the mean over the batch belong to the trainer.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any

import torch

from iddpm._tensor import check_same_shape, check_timesteps, mean_flat
from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType
from iddpm.diffusion.likelihood import vb_term_bits

ModelFn = Callable[..., torch.Tensor]


class LossKind(enum.Enum):
    """The training objective."""

    SIMPLE = "simple"  # (P9) loss = MSE of the mean-channel target; variance channels untrained
    HYBRID = "hybrid"  # (P11) loss = MSE + λ·T·L_t, mean detached inside L_t
    VLB = "vlb"  # (P10) loss = T·L_t, the bound trains the mean and the variance


def _as_kind(kind: LossKind | str) -> LossKind:
    if isinstance(kind, LossKind):
        return kind
    try:
        return LossKind(kind)
    except ValueError:
        choices = ", ".join(k.value for k in LossKind)
        raise ValueError(f"unknown loss kind {kind!r}; choose one of: {choices}") from None


def _mse_target(
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """What the mean channels should output: ε, x0 or the posterior mean μ̃ (P3, P7)."""
    if diffusion.mean_type is MeanType.EPSILON:
        return noise
    if diffusion.mean_type is MeanType.X0:
        return x0
    return diffusion.q_posterior(x0, x_t, t)[0]


def training_losses(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None = None,
    kind: LossKind | str = LossKind.HYBRID,
    vlb_weight: float = 0.001,
    model_kwargs: dict[str, Any] | None = None,
    *,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Per-example training losses at steps t (P9, P11).

    x0: [N, C, H, W] in [−1, 1] (on the uint8 grid for "vb" to be a likelihood term);
    t: [N] int64 code steps; noise: like x0, or drawn from `generator` when None.
    model_fn(x_t, t, **model_kwargs) -> [N, C or 2C, H, W].
    Returns [N] tensors in x0's dtype (they may carry the autograd graph; detach to log):
      "loss": the objective of `kind` (see the module docstring for λ);
      "mse": mean over dims of (target − mean channels)², target ε, x0 or μ̃ by mean type;
      "vb": L_t in bits/dim (decoder NLL at t = 0), x̂0 not clipped; its mean channels
        are detached except for kind "vlb".
    "simple" and "hybrid" with a fixed variance both give loss = mse: the vb term would
    carry no gradient there, so it is reported but not added (as in the reference).
    Unlike the reference's MSE loss, "simple" never adds vb for learned variances.
    """
    kind = _as_kind(kind)
    if not (isinstance(vlb_weight, (int, float)) and math.isfinite(vlb_weight) and vlb_weight > 0):
        raise ValueError(f"vlb_weight must be a finite number > 0, got {vlb_weight!r}")
    if x0.ndim < 2:
        raise ValueError(f"x0 must be a batch [N, C, ...], got shape {tuple(x0.shape)}")
    check_timesteps(t, diffusion.num_timesteps, batch=x0.shape[0])
    if noise is None:
        device = generator.device if generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
        noise = noise.to(x0.device)
    check_same_shape("noise", noise, "x0", x0)

    # 1. forward process (P2), 2. one network call.
    x_t = diffusion.q_sample(x0, t, noise)
    output = model_fn(x_t, t, **(model_kwargs or {}))
    mean_out, var_out = diffusion.split_output(output, x_t)

    # 3. the regression term on the mean channels (P9).
    mse = mean_flat((_mse_target(diffusion, x0, x_t, t, noise) - mean_out) ** 2)

    # 4. the sampled bound term L_t (P10). stop-gradient: in L_hybrid it may only train Σ.
    if kind is LossKind.VLB:
        vb_input = output
    elif var_out is None:
        vb_input = mean_out.detach()
    else:
        vb_input = torch.cat([mean_out.detach(), var_out], dim=1)
    vb = vb_term_bits(diffusion, vb_input, x0, x_t, t, clip_denoised=False)["output"]

    # 5. combine; λ·L_vlb is estimated by λ·T·L_t (module docstring).
    num_t = diffusion.num_timesteps
    if kind is LossKind.VLB:
        loss = num_t * vb
    elif kind is LossKind.HYBRID and diffusion.var_type.learned:
        loss = mse + vlb_weight * num_t * vb
    else:
        loss = mse
    return {"loss": loss, "mse": mse, "vb": vb}
