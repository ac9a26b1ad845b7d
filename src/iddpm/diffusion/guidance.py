"""Guidance as transforms of the model function, below the sampler registry.

Every sampler calls `model_fn(x_t, t, **cond)`; a guided model function answers that call
with a guided output in the same format (mean channels, plus variance channels when Σ is
learned), so every registered sampler, present or future, is guided with no change to its
loop. Build the guided function around the model function that the sampler will call,
i.e. after the respacing adapter (t is then the index of the process being run, and
`diffusion` is that process).

Classifier-free guidance (Ho & Salimans 2022), `classifier_free`:

    ε̃ = ε_∅ + W·(ε_y − ε_∅)

from a network trained with class dropout, whose label `null_label` means "no label".
W = 1 is the conditional model and W = 0 the unconditional one, each with one network row
per sample and bit for bit (no arithmetic is applied to them); any other W runs the
conditional and the null rows as one batch of 2N. Mean channels combine linearly in any
output parameterisation (x̂0 and μ are affine in ε at fixed x_t). With learned Σ, the
variance channels are the conditional branch's by default (`variance_from="cond"`, as
GLIDE does): the guided sample is meant to be a sample of class y, and the null branch's
Σ describes the broader unconditional posterior; "null" takes the other branch's.

Classifier guidance (Dhariwal & Nichol 2021), `classifier_guided`, with
g = ∇_{x_t} log p_φ(y | x_t, t) from a noise-aware classifier and scale S, in two forms:

- `GradForm.MEAN` (their Algorithm 1, for ancestral sampling): μ ← μ + S·Σ·g. It is
  applied as the ε shift that moves the reverse mean by exactly S·Σ·g,
  Δε = −S·Σ·g·√α_t·√(1−ᾱ_t)/β_t (μ = (x_t − β_t/√(1−ᾱ_t)·ε)/√α_t), with Σ the model's
  own reverse variance at this step (learned or fixed; for the `analytic` sampler too,
  whose step uses Analytic-DPM's variance instead). When x̂0 is clipped the clip acts
  after the shift (the authors shift the clipped mean); without clipping the two are
  identical.
- `GradForm.EPS` (their Algorithm 2, the score form for DDIM and the ODE solvers):
  ε ← ε − S·√(1−ᾱ_t)·g. At S = 1 with the exact classifier this is exactly the
  conditional ε_y of the unconditional model's process, since
  ∇log p(x_t | y) = ∇log p(x_t) + ∇log p(y | x_t) and ε = −√(1−ᾱ_t)·∇log p(x_t).

`form_for(ode)` picks the form from a sampler's registry entry: deterministic samplers
(ODE form) take EPS; stochastic ones MEAN. The label reaches the classifier as the `y`
keyword of the sampler's model_kwargs; the network gets it too when it is conditional
(`pass_label`), so both guidances compose: classifier_guided(classifier_free(...)).

Cost: `rows_per_call(W)` network rows per sample per call (2 for W ∉ {0, 1}); classifier
guidance adds one classifier forward and backward per call.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any

import torch

from iddpm._tensor import broadcast_at
from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType

ModelFn = Callable[..., torch.Tensor]
VARIANCE_BRANCHES = ("cond", "null")


class GradForm(enum.Enum):
    """How a classifier's gradient enters the reverse step (module docstring)."""

    MEAN = "mean"
    EPS = "eps"


def form_for(ode: bool) -> GradForm:
    """The classifier-guidance form for a sampler: EPS for deterministic (ODE) samplers,
    MEAN (the ancestral mean shift) for stochastic ones."""
    return GradForm.EPS if ode else GradForm.MEAN


def check_scale(flag: str, value: float) -> float:
    """A guidance scale: a finite number >= 0 (one-line ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{flag} must be a number >= 0, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{flag} must be a finite number >= 0, got {value!r}; 1 is the plain "
            "conditional model, larger values follow the class more closely"
        )
    return float(value)


def rows_per_call(scale: float) -> int:
    """Network rows each sample costs per model call under classifier-free guidance W:
    1 for W = 0 (null label only) and W = 1 (conditional only), else 2."""
    return 1 if scale in (0.0, 1.0) else 2


def _label(cond: dict[str, Any]) -> torch.Tensor:
    y = cond.get("y")
    if y is None:
        raise ValueError("guidance needs the class labels: pass model_kwargs={'y': labels}")
    return y


def _twice(value: Any) -> Any:
    return torch.cat([value, value]) if isinstance(value, torch.Tensor) else value


def classifier_free(
    model_fn: ModelFn,
    scale: float,
    null_label: int,
    *,
    variance_from: str = "cond",
    learned_sigma: bool = True,
) -> ModelFn:
    """Classifier-free guidance at scale W of a network trained with class dropout.

    model_fn(x_t [N, C, H, W], t [N], y=[N] int64, **rest) -> [N, C or 2C, H, W];
    null_label: the network's "no label" class index. learned_sigma: the output has 2C
    channels, the last C of which (variance) come from the `variance_from` branch.
    """
    scale = check_scale("--guidance-scale", scale)
    if variance_from not in VARIANCE_BRANCHES:
        raise ValueError(f"unknown variance branch {variance_from!r}; choose one of: cond, null")

    def guided(x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        y = _label(cond)
        null = torch.full_like(y, null_label)
        if scale == 1.0:
            return model_fn(x, t, **cond)
        if scale == 0.0:
            return model_fn(x, t, **{**cond, "y": null})
        rest = {k: _twice(v) for k, v in cond.items() if k != "y"}
        both = model_fn(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, null]), **rest)
        out_c, out_u = both.chunk(2)
        c = x.shape[1]
        mean = out_u[:, :c] + scale * (out_c[:, :c] - out_u[:, :c])
        if not learned_sigma:
            return mean
        var = (out_c if variance_from == "cond" else out_u)[:, c:]
        return torch.cat([mean, var], dim=1)

    return guided


def classifier_gradient(
    classifier_fn: ModelFn, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """∇_x log p_φ(y | x, t) [N, C, H, W] in x's dtype; classifier_fn(x, t) -> logits
    [N, K]. Works inside torch.no_grad and torch.inference_mode (the sampler loops')."""
    with torch.inference_mode(False), torch.enable_grad():
        xi = x.detach().clone().requires_grad_(True)
        logits = classifier_fn(xi, t.clone())
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        log_p = torch.log_softmax(logits, dim=1).gather(1, y.clone().view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(log_p, xi)
    return grad.detach().to(x.dtype)


def _mean_channel_shift(
    diffusion: GaussianDiffusion, delta_eps: torch.Tensor, x: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The change of the mean channels that a change Δε of ε means, at fixed x_t: every
    output parameterisation is affine in ε (P7, P3)."""
    tables = diffusion.tables_on(x.device)
    if diffusion.mean_type is MeanType.EPSILON:
        return delta_eps
    d_x0 = -broadcast_at(tables["sqrt_recipm1_alphas_cumprod"], t, x) * delta_eps
    if diffusion.mean_type is MeanType.X0:
        return d_x0
    return broadcast_at(tables["posterior_mean_coef1"], t, x) * d_x0


def classifier_guided(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    classifier_fn: ModelFn,
    scale: float,
    form: GradForm,
    *,
    pass_label: bool = True,
) -> ModelFn:
    """Classifier guidance at scale S in `form` (module docstring).

    model_fn, classifier_fn: called with this process's indices t (both behind their
    respacing adapters); diffusion: the process the sampler runs; pass_label: give the
    network the label too (class-conditional networks). The label is model_kwargs["y"].
    """
    scale = check_scale("--classifier-scale", scale)
    form = GradForm(form)

    def guided(x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        y = _label(cond)
        out = model_fn(
            x, t, **(cond if pass_label else {k: v for k, v in cond.items() if k != "y"})
        )
        if scale == 0.0:
            return out
        grad = classifier_gradient(classifier_fn, x, t, y).to(out.dtype)
        mean_out, var_out = diffusion.split_output(out, x)
        tables = diffusion.tables_on(x.device)
        root_1m_abar = broadcast_at(tables["sqrt_one_minus_alphas_cumprod"], t, out)
        if form is GradForm.EPS:
            delta = -scale * root_1m_abar * grad
        else:  # μ + S·Σ·g, as an ε shift (module docstring)
            variance, _ = diffusion.p_variance(var_out, x.to(out.dtype), t)
            alpha = broadcast_at(tables["alphas"], t, out)
            beta = broadcast_at(tables["betas"], t, out)
            delta = -scale * variance * grad * alpha.sqrt() * root_1m_abar / beta
        mean_out = mean_out + _mean_channel_shift(diffusion, delta, out, t)
        return mean_out if var_out is None else torch.cat([mean_out, var_out], dim=1)

    return guided
