"""The Gaussian diffusion process: float64 tables, forward process, posterior, reverse step.

Index convention: code step t ∈ {0, …, T−1} is the paper's step t+1 (docs/paper.md,
Conventions), so `alphas_cumprod[t]` = ᾱ_{t+1} and `alphas_cumprod_prev[t]` = ᾱ_t with
ᾱ_0 = 1. Every table is built once in float64 and kept per device; a look-up returns the
sample's dtype. The model is never called here: `p_mean_variance` takes a model *output*.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from iddpm._tensor import broadcast_at, check_same_shape, check_timesteps


class MeanType(enum.Enum):
    """What the network's first C output channels predict (P7)."""

    EPSILON = "epsilon"
    X0 = "x0"
    PREV_MEAN = "prev-mean"


class VarType(enum.Enum):
    """How Σ_θ is obtained (P8). LEARNED* models output 2C channels.

    A process built with `reverse_variance=` (see `GaussianDiffusion.with_reverse_variance`)
    uses that per-step table instead; the variance type then only says how many channels
    the model outputs (the variance channels of a LEARNED* model are ignored).
    """

    FIXED_SMALL = "fixed-small"  # σ² = β̃_t
    FIXED_LARGE = "fixed-large"  # σ² = β_t (β̃_1 at the first step)
    LEARNED = "learned"  # the extra channels are log σ² directly
    LEARNED_RANGE = "learned-range"  # log σ² = v log β_t + (1 − v) log β̃_t, v = (r + 1)/2

    @property
    def learned(self) -> bool:
        return self in (VarType.LEARNED, VarType.LEARNED_RANGE)


@dataclass
class PMeanVar:
    """Parameters of p_θ(x_{t−1} | x_t), all [N, C, H, W] in the sample's dtype.

    `eps` is the noise implied by the model output and `model_var_values` the raw variance
    channels (None for fixed variances); samplers such as DDIM use them.
    """

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_x0: torch.Tensor
    eps: torch.Tensor
    model_var_values: torch.Tensor | None


_TABLES = (
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "alphas_cumprod_next",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "fixed_large_variance",
    "log_betas",
)


def _check_reverse_variance(variance: torch.Tensor | None, num_t: int) -> torch.Tensor | None:
    """The [T] float64 CPU copy of a reverse-variance table, or a one-line ValueError."""
    if variance is None:
        return None
    v = torch.as_tensor(variance, dtype=torch.float64).detach().cpu()
    if v.shape != (num_t,):
        raise ValueError(
            f"the reverse-variance table has shape {tuple(v.shape)} but the process has "
            f"{num_t} steps; re-estimate it for this step spacing"
        )
    if not bool((torch.isfinite(v) & (v > 0)).all()):
        raise ValueError("reverse variances must be finite and > 0; re-estimate the table")
    return v


class GaussianDiffusion:
    """Holds the float64 [T] tables of one diffusion process and the math that reads them.

    betas: [T] (any float dtype; converted to float64), each in (0, 1].
    reverse_variance: optional [T] table of σ_t² > 0 for p_θ(x_{t−1} | x_t), replacing the
    variance that `var_type` gives (e.g. Analytic-DPM's estimate, `diffusion.analytic`);
    index 0 is the decoder's. It belongs to these exact steps: respacing drops it.
    """

    def __init__(
        self,
        betas: torch.Tensor,
        mean_type: MeanType = MeanType.EPSILON,
        var_type: VarType = VarType.LEARNED_RANGE,
        reverse_variance: torch.Tensor | None = None,
    ) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(
                f"betas must be a non-empty 1-d tensor, got shape {tuple(betas.shape)}"
            )
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must lie in (0, 1]; build them with iddpm.diffusion.schedules")
        if not isinstance(mean_type, MeanType) or not isinstance(var_type, VarType):
            raise ValueError(
                "mean_type and var_type must be MeanType / VarType members; "
                "convert strings with MeanType(value) / VarType(value)"
            )
        self.mean_type = mean_type
        self.var_type = var_type
        self.num_timesteps = int(betas.shape[0])
        one = torch.ones(1, dtype=torch.float64)

        # (P1, P2) forward-process tables.
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([one, self.alphas_cumprod[:-1]])
        self.alphas_cumprod_next = torch.cat([self.alphas_cumprod[1:], 0.0 * one])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()

        # (P3) posterior q(x_{t−1} | x_t, x0).
        acp_prev = self.alphas_cumprod_prev
        self.posterior_variance = betas * (1.0 - acp_prev) / (1.0 - self.alphas_cumprod)
        # β̃ is 0 at the first step, so its log is taken from the next step ("clipped").
        # With T = 1 there is no next step; β_1 is the only scale available.
        first = self.posterior_variance[1:2] if self.num_timesteps > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([first, self.posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = betas * acp_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - acp_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)
        )

        # (P8) fixed-large σ² = β_t, except β̃_1 at the first step: the authors' choice "to get
        # a better decoder log likelihood" (β_1 would make the decoder needlessly wide).
        self.fixed_large_variance = torch.cat([first, betas[1:]])
        self.log_betas = torch.log(betas)
        self.reverse_variance = _check_reverse_variance(reverse_variance, self.num_timesteps)
        self._device_tables: dict[torch.device, dict[str, torch.Tensor]] = {}

    def with_reverse_variance(self, variance: torch.Tensor) -> GaussianDiffusion:
        """This process (same β, mean and variance types) with σ_t² = variance[t] in every
        reverse step. variance: [T] positive, finite; a table made for another step spacing
        is a one-line ValueError."""
        return GaussianDiffusion(self.betas, self.mean_type, self.var_type, variance)

    # ------------------------------------------------------------------ table access
    def tables_on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The float64 tables on `device`, copied there once and cached."""
        device = torch.device(device)
        if device not in self._device_tables:
            tables = {k: getattr(self, k).to(device) for k in _TABLES}
            if self.reverse_variance is not None:
                tables["reverse_variance"] = self.reverse_variance.to(device)
                tables["reverse_log_variance"] = torch.log(self.reverse_variance).to(device)
            self._device_tables[device] = tables
        return self._device_tables[device]

    def _at(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return broadcast_at(self.tables_on(x.device)[name], t, x)

    def _check(self, t: torch.Tensor, x: torch.Tensor) -> None:
        check_timesteps(t, self.num_timesteps, batch=x.shape[0])

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(
        self, x0: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(P2) q(x_t | x0): mean √ᾱ_t·x0, variance 1 − ᾱ_t and its log, each like x0."""
        self._check(t, x0)
        mean = self._at("sqrt_alphas_cumprod", t, x0) * x0
        var = self._at("alphas_cumprod", t, x0).neg().add(1.0).expand_as(x0)
        log_var = self._at("log_one_minus_alphas_cumprod", t, x0).expand_as(x0)
        return mean, var, log_var

    def q_sample(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(P2) Draw x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε. x0, noise: [N, C, H, W]; t: [N] int64."""
        self._check(t, x0)
        if noise is None:
            noise = torch.randn_like(x0)
        check_same_shape("noise", noise, "x0", x0)
        return (
            self._at("sqrt_alphas_cumprod", t, x0) * x0
            + self._at("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(P3) q(x_{t−1} | x_t, x0): mean, variance β̃_t and clipped log β̃_t, each like x_t.

        At t = 0 the variance is 0 and the log-variance is log β̃ of the next step.
        """
        check_same_shape("x0", x0, "x_t", x_t)
        self._check(t, x_t)
        mean = (
            self._at("posterior_mean_coef1", t, x_t) * x0
            + self._at("posterior_mean_coef2", t, x_t) * x_t
        )
        var = self._at("posterior_variance", t, x_t).expand_as(x_t)
        log_var = self._at("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, var, log_var

    # ------------------------------------------------------------------ conversions
    def predict_x0_from_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        """(P7) x̂0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t."""
        return (
            self._at("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._at("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_x0(
        self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor
    ) -> torch.Tensor:
        """Inverse of `predict_x0_from_eps`: ε = (x_t/√ᾱ_t − x0)/√(1/ᾱ_t − 1)."""
        return (self._at("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0) / self._at(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    def predict_x0_from_prev_mean(
        self, x_t: torch.Tensor, t: torch.Tensor, prev_mean: torch.Tensor
    ) -> torch.Tensor:
        """Invert (P3)'s mean for x0: x0 = (μ − coef2·x_t)/coef1."""
        coef1 = self._at("posterior_mean_coef1", t, x_t)
        return (prev_mean - self._at("posterior_mean_coef2", t, x_t) * x_t) / coef1

    # ------------------------------------------------------------------ reverse process
    def split_output(
        self, model_output: torch.Tensor, x_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Split a model output into (mean channels, variance channels or None)."""
        c = x_t.shape[1]
        want = 2 * c if self.var_type.learned else c
        if (
            model_output.ndim != x_t.ndim
            or model_output.shape[1] != want
            or (model_output.shape[0] != x_t.shape[0] or model_output.shape[2:] != x_t.shape[2:])
        ):
            raise ValueError(
                f"model output has shape {tuple(model_output.shape)} but variance type "
                f"{self.var_type.value!r} with x_t of shape {tuple(x_t.shape)} needs "
                f"{want} channels; build the model with out_channels={want}"
            )
        if self.var_type.learned:
            mean_out, var_out = torch.split(model_output, c, dim=1)
            return mean_out, var_out
        return model_output, None

    def p_variance(
        self, var_out: torch.Tensor | None, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(P8) Σ_θ(x_t, t) as (variance, log-variance), each like x_t.

        With a `reverse_variance` table that table is used and `var_out` is ignored.
        """
        if self.reverse_variance is not None:
            var = self._at("reverse_variance", t, x_t)
            return var.expand_as(x_t), self._at("reverse_log_variance", t, x_t).expand_as(x_t)
        if self.var_type is VarType.LEARNED:
            assert var_out is not None
            return torch.exp(var_out), var_out
        if self.var_type is VarType.LEARNED_RANGE:
            assert var_out is not None
            # 3. learned Σ: interpolate log β̃_t and log β_t with v = (r + 1)/2, no clamp.
            min_log = self._at("posterior_log_variance_clipped", t, x_t)
            max_log = self._at("log_betas", t, x_t)
            frac = (var_out + 1.0) / 2.0
            log_var = frac * max_log + (1.0 - frac) * min_log
            return torch.exp(log_var), log_var
        if self.var_type is VarType.FIXED_LARGE:
            var = self._at("fixed_large_variance", t, x_t)
            return var.expand_as(x_t), torch.log(var).expand_as(x_t)
        var = self._at("posterior_variance", t, x_t)
        log_var = self._at("posterior_log_variance_clipped", t, x_t)
        return var.expand_as(x_t), log_var.expand_as(x_t)

    def p_mean_variance(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
    ) -> PMeanVar:
        """(P6–P8) p_θ(x_{t−1} | x_t) from a model output.

        model_output: [N, C or 2C, H, W]; x_t: [N, C, H, W]; t: [N] int64.
        `clip_denoised` clips x̂0 to [−1, 1] before forming the mean (not for PREV_MEAN,
        whose mean is the output itself, as in the reference).
        """
        self._check(t, x_t)
        mean_out, var_out = self.split_output(model_output, x_t)
        variance, log_variance = self.p_variance(var_out, x_t, t)

        def process(x0: torch.Tensor) -> torch.Tensor:
            return x0.clamp(-1.0, 1.0) if clip_denoised else x0

        if self.mean_type is MeanType.PREV_MEAN:
            pred_x0 = process(self.predict_x0_from_prev_mean(x_t, t, mean_out))
            mean = mean_out
        else:
            if self.mean_type is MeanType.X0:
                pred_x0 = process(mean_out)
            else:
                pred_x0 = process(self.predict_x0_from_eps(x_t, t, mean_out))
            mean, _, _ = self.q_posterior(pred_x0, x_t, t)
        eps = self.predict_eps_from_x0(x_t, t, pred_x0)
        return PMeanVar(mean, variance, log_variance, pred_x0, eps, var_out)
