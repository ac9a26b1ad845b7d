"""Strided processes (docs/paper.md P14, P15) and the model adapter that maps timesteps.

A strided process keeps a subsequence S of the base steps and rebuilds β from ᾱ at the
kept steps; the model still sees the *original* step indices (optionally rescaled to
[0, 1000)). The adapter below is how every caller turns "index of the process being run"
into what the network was trained on.

Step specs (`parse_steps`), with T the base process's number of steps:
- `""` or `None`: all T steps.
- `"K"`: K steps spread evenly over [0, T−1] with a real-valued stride rounded to integers
  (always keeping 0 and T−1 when K ≥ 2); `"T"` itself keeps every step.
- `"10,15,20"`: T is cut into as many equal sections as there are counts (the first
  T mod n sections get one extra step) and each section is spaced like `"K"` on its own.
- `"ddimK"`: the integer stride i for which range(0, T, i) has exactly K elements
  (DDIM's spacing; the first such i is used). It starts below the top: with the cosine
  schedule at T = 1000, `"ddim10"` keeps 0, 100, …, 900 and starts where ᾱ ≈ 0.024, not at
  noise (ᾱ_{T−1} ≈ 2.4e-9).
- `"trailingK"`: K steps evenly spaced down from the top, T−1−⌊iT/K⌋ for i = 0 … K−1: it
  always reaches T−1 and its lowest step is ⌈T/K⌉−1 (99 for `"trailing10"` of T = 1000);
  the last transition then goes from there straight to the data (ᾱ = 1), as strided
  processes always do. `"trailingT"` keeps every step.
- `"logsnrK"`: K steps uniform in log-SNR log(ᾱ/(1−ᾱ)) from LOGSNR_CEILING (3.2) down to
  LOGSNR_FLOOR (−4.6), clipped to the schedule's own range: target i is mapped to the step
  of nearest log-SNR; where targets would share a step a step moves up to the next free
  one, but never past the room the remaining targets need below the top target's step (a
  K that does not fit is a one-line error). Without the floor, the cosine schedule's
  clipped last β (log-SNR −12.9 at step 998 of T = 1000, −19.8 at 999: 23% of its range
  in one step) sent the top targets to 998 and 999: `logsnr5` kept 0, 161, 943, 998, 999
  and every sampler scored digits-FID 165–320 at 5 calls (DPM-Solver clips the cosine
  schedule's end for the same reason). Needs the schedule's ᾱ
  (`parse_steps(..., alphas_cumprod=...)`; `spaced_model` passes it).
- `"karrasK"`: Karras et al.'s (EDM) ρ = 7 spacing in σ = √((1 − ᾱ)/ᾱ),
  σ_i = (σ_max^{1/ρ} + i/(K−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ with [σ_min, σ_max] =
  [KARRAS_SIGMA_MIN, KARRAS_SIGMA_MAX] = [0.2, 10] clipped to the schedule's range, each
  target the step of nearest log σ (collisions as for `logsnrK`). Over the full σ range
  (2·10⁴ on the cosine schedule) the spacing wastes its steps at noise, as diffusers'
  Karras sigmas do (FID ≈ 340 there). The range [0.2, 10] (the same as `logsnrK`'s) was
  measured on the digits model (cosine, T = 1000), digits-FID of 1000 samples at 5 calls
  (iPNDM; UniPC): σ ∈ [0.2, 10] 4.0; σ_min 0.05 38 (8.2 for UniPC), 0.4 5.9; σ_max 80 with
  σ_min 0.05/0.2/0.4: 11/13/49; at 10 calls (iPNDM) σ_min 0.05/0.1/0.2: 4.2/4.0/3.7
  (benchmarks/results/fewstep_spacing_ranges.json). The last network call, at σ_min,
  returns x̂0 there: stopping at σ = 0.2 (step 118) rather than 0.006 (step 0) is what
  trailing spacing does too (its lowest step is ⌈T/K⌉ − 1).
- `"at:0,5,17,999"`: exactly these steps (strictly increasing integers in [0, T)), e.g. a
  bound-optimal schedule; `format_steps(kept)` writes a list in this syntax, and
  `parse_steps(format_steps(kept), T) == kept`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from iddpm.diffusion.gaussian import GaussianDiffusion

ModelFn = Callable[..., torch.Tensor]

_FORMATS = (
    "use a count like '50', section counts like '10,15,20', 'ddim50', 'trailing50', "
    "'logsnr50', 'karras50', or a list of steps like 'at:0,10,999'"
)
EXPLICIT_PREFIX = "at:"
# The σ = √((1 − ᾱ)/ᾱ) range of `karrasK` and `logsnrK` (log-SNR = −2 log σ), chosen by
# measurement (module docstring): [0.2, 10] in σ, i.e. log-SNR [−4.6, 3.2].
KARRAS_SIGMA_MIN = 0.2
KARRAS_SIGMA_MAX = 10.0
KARRAS_RHO = 7.0
LOGSNR_FLOOR = -2.0 * math.log(KARRAS_SIGMA_MAX)
LOGSNR_CEILING = -2.0 * math.log(KARRAS_SIGMA_MIN)


def timestep_scale(num_timesteps: int, rescale_timesteps: bool) -> float:
    """What the network's timestep input is multiplied by: 1000/T when the model is trained
    with rescaled timesteps (it then always sees [0, 1000), whatever T is), else 1."""
    return 1000.0 / num_timesteps if rescale_timesteps else 1.0


class ModelAdapter:
    """Wrap a network so it can be called as model_fn(x_t, t, **cond) with t the index of
    the process being run.

    timestep_map: [K] int64 original step of each index (None: identity);
    scale: multiply the original step by this before the network sees it (1000/T when
    the model was trained with rescaled timesteps, else 1.0). With scale != 1 the network
    receives float32 timesteps, as the reference implementation does; otherwise it gets
    the int64 original steps.
    """

    def __init__(
        self, model: ModelFn, timestep_map: torch.Tensor | None = None, scale: float = 1.0
    ) -> None:
        self.model = model
        self.timestep_map = timestep_map
        self.scale = float(scale)
        self._maps: dict[torch.device, torch.Tensor] = {}

    def original_steps(self, t: torch.Tensor) -> torch.Tensor:
        """[N] int64 process indices -> [N] int64 base-process steps (cached per device)."""
        if self.timestep_map is None:
            return t
        if t.device not in self._maps:
            self._maps[t.device] = self.timestep_map.to(t.device)
        return self._maps[t.device][t]

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        steps = self.original_steps(t)
        if self.scale != 1.0:
            steps = steps.to(torch.float32) * self.scale
        return self.model(x_t, steps, **cond)


# ---------------------------------------------------------------------- step specs
def _spaced_section(start: int, size: int, count: int) -> list[int]:
    """`count` steps of [start, start+size) with real stride (size−1)/(count−1), rounded.

    The position is accumulated by repeated addition and rounded half to even (Python's
    `round`), which is how the reference picks its steps; both ends are always kept.
    """
    stride = (size - 1) / (count - 1) if count > 1 else 1.0
    steps, pos = [], 0.0
    for _ in range(count):
        steps.append(start + round(pos))
        pos += stride
    return steps


def _ddim_steps(count: int, num_timesteps: int) -> list[int]:
    """(P15) range(0, T, i) for the integer stride i that gives exactly `count` steps."""
    for stride in range(1, num_timesteps + 1):
        n = len(range(0, num_timesteps, stride))
        if n == count:
            return list(range(0, num_timesteps, stride))
        if n < count:
            # Counts only shrink as the stride grows: report the two neighbours of `count`.
            above = len(range(0, num_timesteps, stride - 1)) if stride > 1 else None
            hint = f"{above} (stride {stride - 1}) or " if above is not None else ""
            raise ValueError(
                f"'ddim{count}' needs an integer stride giving exactly {count} of "
                f"{num_timesteps} steps, but strides give {hint}{n} (stride {stride}); "
                f"use one of those counts, or '{count}' for a real-valued stride"
            )
    raise AssertionError("unreachable: stride T always gives one step")


def _trailing_steps(count: int, num_timesteps: int) -> list[int]:
    """K steps evenly spaced down from the top: T−1−⌊iT/K⌋, i = 0 … K−1, sorted."""
    return sorted(num_timesteps - 1 - (i * num_timesteps) // count for i in range(count))


def _log_snr(alphas_cumprod: torch.Tensor, spec: str) -> torch.Tensor:
    abar = alphas_cumprod.detach().to(device="cpu", dtype=torch.float64)
    logsnr = torch.log(abar) - torch.log1p(-abar)  # strictly decreasing in t
    if not bool(torch.isfinite(logsnr).all()):
        raise ValueError(
            f"step spec {spec!r} needs 0 < ᾱ < 1 at every step for a finite log-SNR; "
            "use an even spacing like 'trailing50' for this schedule"
        )
    return logsnr


def _nearest_steps(targets: torch.Tensor, logsnr: torch.Tensor, spec: str) -> list[int]:
    """The steps of log-SNR nearest to `targets` [K] (decreasing log-SNR, the last at or
    above the schedule's end), sorted; colliding targets move up to the next free step,
    never past the room the remaining ones need below the top target's step."""
    T, count = logsnr.numel(), targets.numel()
    # nearest step: the insertion point in the increasing −logsnr and its left neighbour
    right = torch.searchsorted(-logsnr, -targets).clamp(1, T - 1)
    left = right - 1
    closer_left = (logsnr[left] - targets).abs() <= (logsnr[right] - targets).abs()
    nearest = torch.where(closer_left, left, right).tolist()
    top = nearest[-1]
    if top + 1 < count:
        raise ValueError(
            f"step spec {spec!r} needs {count} steps at or below step {top}, where its "
            f"log-SNR range ends; use at most {top + 1} steps"
        )
    kept: list[int] = []
    for i, step in enumerate(nearest):
        # next free step above the last one, leaving room for the count − 1 − i still to place
        floor = kept[-1] + 1 if kept else 0
        kept.append(min(max(step, floor), top - count + 1 + i))
    return kept


def logsnr_steps(
    count: int,
    alphas_cumprod: torch.Tensor,
    floor: float = LOGSNR_FLOOR,
    spec: str = "",
    ceiling: float = LOGSNR_CEILING,
) -> list[int]:
    """K steps uniform in log-SNR from min(log-SNR at step 0, `ceiling`) down to
    max(log-SNR at T−1, `floor`), sorted (module docstring)."""
    logsnr = _log_snr(alphas_cumprod, spec or f"logsnr{count}")
    high = min(float(logsnr[0]), ceiling)
    if count == 1:
        return _nearest_steps(torch.tensor([high], dtype=torch.float64), logsnr, spec)
    low = max(float(logsnr[-1]), floor)
    targets = torch.linspace(high, low, count, dtype=torch.float64)
    return _nearest_steps(targets, logsnr, spec or f"logsnr{count}")


def karras_steps(
    count: int,
    alphas_cumprod: torch.Tensor,
    sigma_max: float = KARRAS_SIGMA_MAX,
    rho: float = KARRAS_RHO,
    spec: str = "",
    sigma_min: float = KARRAS_SIGMA_MIN,
) -> list[int]:
    """K steps at Karras et al.'s σ_i = (σ_max^{1/ρ} + i/(K−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ
    in σ = √((1 − ᾱ)/ᾱ), σ_min that of step 0, σ_max = min(`sigma_max`, σ of step T−1);
    each the step of nearest log σ (log-SNR = −2 log σ), sorted (module docstring)."""
    logsnr = _log_snr(alphas_cumprod, spec or f"karras{count}")
    sig_min = max(math.exp(-0.5 * float(logsnr[0])), sigma_min)
    if count == 1:
        return _nearest_steps(torch.tensor([-2.0 * math.log(sig_min)]), logsnr, spec)
    sig_max = min(math.exp(-0.5 * float(logsnr[-1])), sigma_max)
    ramp = torch.linspace(1.0, 0.0, count, dtype=torch.float64)
    sig = (sig_max ** (1 / rho) + ramp * (sig_min ** (1 / rho) - sig_max ** (1 / rho))) ** rho
    return _nearest_steps(-2.0 * torch.log(sig), logsnr, spec or f"karras{count}")


def _parse_count(token: str, spec: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise ValueError(
            f"step spec {spec!r} has a non-integer count {token.strip()!r}; {_FORMATS}"
        ) from None


def _check_count(count: int, prefix: str, spec: str, num_timesteps: int) -> None:
    if count < 1:
        raise ValueError(f"step spec {spec!r} asks for {count} steps; use '{prefix}K' with K >= 1")
    if count > num_timesteps:
        raise ValueError(
            f"step spec {spec!r} asks for {count} steps but the process has only "
            f"{num_timesteps}; use at most '{prefix}{num_timesteps}'"
        )


def _explicit_steps(spec: str, num_timesteps: int) -> list[int]:
    """The steps of an `"at:s0,s1,..."` spec, checked: integers, in range, increasing."""
    body = spec.strip()[len(EXPLICIT_PREFIX) :]
    if body.strip() == "":
        raise ValueError(f"step spec {spec!r} lists no steps; list them like 'at:0,10,999'")
    kept = []
    for token in body.split(","):
        try:
            kept.append(int(token))
        except ValueError:
            raise ValueError(
                f"step spec {spec!r} has a non-integer step {token.strip()!r}; "
                "list integers like 'at:0,10,999'"
            ) from None
    for step in kept:
        if not 0 <= step < num_timesteps:
            raise ValueError(
                f"step spec {spec!r} has step {step} outside [0, {num_timesteps}); "
                f"list steps from 0 to {num_timesteps - 1}"
            )
    for a, b in itertools.pairwise(kept):
        if a == b:
            raise ValueError(f"step spec {spec!r} repeats step {a}; list each step once")
        if b < a:
            raise ValueError(
                f"step spec {spec!r} is not increasing ({a} before {b}); "
                "list the steps in increasing order"
            )
    return kept


def format_steps(steps: Sequence[int]) -> str:
    """The `"at:..."` spec of a list of kept steps (strictly increasing ints >= 0); it parses
    back to the same list."""
    kept = [int(s) for s in steps]
    if not kept or kept[0] < 0 or any(b <= a for a, b in itertools.pairwise(kept)):
        raise ValueError(
            f"cannot write steps {kept} as a spec; pass strictly increasing steps >= 0"
        )
    return EXPLICIT_PREFIX + ",".join(str(s) for s in kept)


# The spacing prefixes of a count ("trailing50"): name -> (K, T, ᾱ or None, spec) -> the K
# steps kept of T. The one table of them: the sweep's --spacing offers these.
SPACINGS: dict[str, Callable[[int, int, torch.Tensor | None, str], list[int]]] = {
    "trailing": lambda k, t, abar, spec: _trailing_steps(k, t),
    "logsnr": lambda k, t, abar, spec: logsnr_steps(k, _need_abar(abar, spec, t), spec=spec),
    "karras": lambda k, t, abar, spec: karras_steps(k, _need_abar(abar, spec, t), spec=spec),
    "ddim": lambda k, t, abar, spec: _ddim_steps(k, t),
}


def parse_steps(
    spec: str | None, num_timesteps: int, *, alphas_cumprod: torch.Tensor | None = None
) -> list[int]:
    """Kept steps of a base process with `num_timesteps` steps, sorted, as a list of int.

    spec: see the module docstring ("", "250", "10,15,20", "ddim50", "trailing50",
    "logsnr50", "karras50", "at:0,10,999"); alphas_cumprod: the base schedule's ᾱ [T]
    (float64), needed by "logsnrK" and "karrasK" only. Raises one-line ValueErrors for
    non-integer, zero or negative counts, counts larger than their section (or than the
    capped range of "logsnrK"/"karrasK"), bad explicit lists, a missing ᾱ and unknown
    formats (P14, P15).
    """
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(
            f"number of diffusion steps must be an integer >= 1, got {num_timesteps!r}"
        )
    if spec is None or spec.strip() == "":
        return list(range(num_timesteps))
    text = spec.strip()
    if text.startswith(EXPLICIT_PREFIX):
        return _explicit_steps(spec, num_timesteps)
    for prefix, keep in SPACINGS.items():
        if text.startswith(prefix):
            count = _parse_count(text[len(prefix) :], spec)
            _check_count(count, prefix, spec, num_timesteps)
            return keep(count, num_timesteps, alphas_cumprod, spec)
    if not text[0].isdigit() and text[0] not in "+-":
        raise ValueError(f"unknown step spec {spec!r}; {_FORMATS}")
    return _section_steps(text, spec, num_timesteps)


def _need_abar(alphas_cumprod: torch.Tensor | None, spec: str, num_timesteps: int) -> torch.Tensor:
    if alphas_cumprod is None:
        raise ValueError(
            f"step spec {spec!r} needs the schedule's alphas_cumprod; pass "
            "parse_steps(..., alphas_cumprod=diffusion.alphas_cumprod) (spaced_model does)"
        )
    if tuple(alphas_cumprod.shape) != (num_timesteps,):
        raise ValueError(
            f"alphas_cumprod has shape {tuple(alphas_cumprod.shape)} but the process has "
            f"{num_timesteps} steps; pass the base diffusion's alphas_cumprod"
        )
    return alphas_cumprod


def _section_steps(text: str, spec: str, num_timesteps: int) -> list[int]:
    """Steps of a count or section-counts spec ("250", "10,15,20")."""
    counts = [_parse_count(tok, spec) for tok in text.split(",")]
    if len(counts) > num_timesteps:
        raise ValueError(
            f"step spec {spec!r} has {len(counts)} sections but the process has only "
            f"{num_timesteps} steps; use at most {num_timesteps} sections"
        )
    size_per, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count < 1:
            raise ValueError(
                f"step spec {spec!r}: section {i} asks for {count} steps; every count must be >= 1"
            )
        if count > size:
            raise ValueError(
                f"step spec {spec!r}: section {i} has {size} steps but asks for {count}; "
                f"use at most {size} there"
            )
        kept += _spaced_section(start, size, count)
        start += size
    return sorted(set(kept))


# ---------------------------------------------------------------------- respacing
def _check_steps_list(steps: Sequence[int], num_timesteps: int) -> list[int]:
    kept = [int(s) for s in steps]
    if not kept:
        raise ValueError("no steps to keep; pass at least one step index")
    if any(b <= a for a, b in itertools.pairwise(kept)):
        raise ValueError("kept steps must be strictly increasing; sort them and drop repeats")
    if kept[0] < 0 or kept[-1] >= num_timesteps:
        raise ValueError(
            f"kept steps must lie in [0, {num_timesteps}), got [{kept[0]}, {kept[-1]}]"
        )
    return kept


def respace(
    diffusion: GaussianDiffusion, steps: Sequence[int]
) -> tuple[GaussianDiffusion, torch.Tensor]:
    """(P14) The strided process that keeps base steps S = `steps` (sorted, unique).

    β_i = 1 − ᾱ_{S_i}/ᾱ_{S_{i−1}} with ᾱ_{S_{−1}} = 1; all other tables (β̃, the clipped
    log-variance, the posterior coefficients, fixed-large variance) follow from these β, so
    a learned-variance model interpolates between the respaced values with the same v.
    Where a kept step directly follows the previous one (S_i = S_{i−1} + 1, or S_0 = 0) the
    base β_{S_i} is used as is: it is the same number without the rounding of a ratio, so
    keeping every step reproduces the base tables bit for bit.

    Returns (diffusion with the same mean and variance types, timestep_map [K] int64 of
    the base step behind each new index).
    """
    kept = _check_steps_list(steps, diffusion.num_timesteps)
    abar = diffusion.alphas_cumprod
    idx = torch.tensor(kept, dtype=torch.int64)
    prev_idx = torch.cat([torch.tensor([-1]), idx[:-1]])
    abar_prev = torch.where(prev_idx >= 0, abar[prev_idx.clamp_min(0)], torch.ones(()))
    betas = 1.0 - abar[idx] / abar_prev
    adjacent = idx - prev_idx == 1
    betas = torch.where(adjacent, diffusion.betas[idx], betas)
    spaced = GaussianDiffusion(betas, mean_type=diffusion.mean_type, var_type=diffusion.var_type)
    return spaced, idx


def spaced_model(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    steps: str | Sequence[int] | None,
    rescale_timesteps: bool,
) -> tuple[GaussianDiffusion, ModelAdapter]:
    """Strided process for a step spec (or a list of kept steps) plus the adapted model.

    The adapter maps the new indices to the base steps and, with `rescale_timesteps`,
    multiplies them by 1000/T_base (the range the network saw in training).
    """
    T = diffusion.num_timesteps
    if steps is None or isinstance(steps, str):
        kept = parse_steps(steps, T, alphas_cumprod=diffusion.alphas_cumprod)
    else:
        kept = list(steps)
    spaced, timestep_map = respace(diffusion, kept)
    return spaced, ModelAdapter(model, timestep_map, timestep_scale(T, rescale_timesteps))
