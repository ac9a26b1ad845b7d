"""Strided processes (PAPER.md P14, P15) and the model adapter that maps timesteps.

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
- `"logsnrK"`: K steps uniform in log-SNR log(ᾱ/(1−ᾱ)) between its values at steps 0 and
  T−1: target i is mapped to the step of nearest log-SNR; where targets would share a step
  (the ends of most schedules are sparse in log-SNR) a step moves up to the next free one,
  but never past the room the remaining targets need, so 0 and T−1 are always kept. The
  cosine schedule's clipped last β (log-SNR −12.9 at step 998 of T = 1000, −19.8 at 999:
  23% of its range in one step) sends over a quarter of the targets past step 997; they
  take the highest steps left, one each (`"logsnr50"` keeps 978 … 999). Needs the
  schedule's ᾱ (`parse_steps(..., alphas_cumprod=...)`; `spaced_model` passes it).
- `"at:0,5,17,999"`: exactly these steps (strictly increasing integers in [0, T)), e.g. a
  bound-optimal schedule; `format_steps(kept)` writes a list in this syntax, and
  `parse_steps(format_steps(kept), T) == kept`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from iddpm.diffusion.gaussian import GaussianDiffusion

ModelFn = Callable[..., torch.Tensor]

_FORMATS = (
    "use a count like '50', section counts like '10,15,20', 'ddim50', 'trailing50', "
    "'logsnr50', or a list of steps like 'at:0,10,999'"
)
EXPLICIT_PREFIX = "at:"


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


def _logsnr_steps(count: int, alphas_cumprod: torch.Tensor, spec: str) -> list[int]:
    """K steps uniform in log-SNR between steps 0 and T−1 (module docstring), sorted."""
    abar = alphas_cumprod.detach().to(device="cpu", dtype=torch.float64)
    logsnr = torch.log(abar) - torch.log1p(-abar)  # strictly decreasing in t
    if not bool(torch.isfinite(logsnr).all()):
        raise ValueError(
            f"step spec {spec!r} needs 0 < ᾱ < 1 at every step for a finite log-SNR; "
            "use an even spacing like 'trailing50' for this schedule"
        )
    T = abar.numel()
    if count == 1:
        return [0]
    targets = torch.linspace(float(logsnr[0]), float(logsnr[-1]), count, dtype=torch.float64)
    # nearest step: the insertion point in the increasing −logsnr and its left neighbour
    right = torch.searchsorted(-logsnr, -targets).clamp(1, T - 1)
    left = right - 1
    closer_left = (logsnr[left] - targets).abs() <= (logsnr[right] - targets).abs()
    nearest = torch.where(closer_left, left, right).tolist()
    kept: list[int] = []
    for i, step in enumerate(nearest):
        # next free step above the last one, leaving room for the count − 1 − i still to place
        floor = kept[-1] + 1 if kept else 0
        kept.append(min(max(step, floor), T - count + i))
    return kept


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
    "logsnr": lambda k, t, abar, spec: _logsnr_steps(k, _need_abar(abar, spec, t), spec),
    "ddim": lambda k, t, abar, spec: _ddim_steps(k, t),
}


def parse_steps(
    spec: str | None, num_timesteps: int, *, alphas_cumprod: torch.Tensor | None = None
) -> list[int]:
    """Kept steps of a base process with `num_timesteps` steps, sorted, as a list of int.

    spec: see the module docstring ("", "250", "10,15,20", "ddim50", "trailing50",
    "logsnr50", "at:0,10,999"); alphas_cumprod: the base schedule's ᾱ [T] (float64), needed
    by "logsnrK" only. Raises one-line ValueErrors for non-integer, zero or negative counts,
    counts larger than their section, bad explicit lists, a missing ᾱ and unknown formats
    (P14, P15).
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
