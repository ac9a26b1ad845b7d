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
  (DDIM's spacing; the first such i is used).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from iddpm.diffusion.gaussian import GaussianDiffusion

ModelFn = Callable[..., torch.Tensor]

_FORMATS = "use a count like '50', section counts like '10,15,20', or 'ddim50'"


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


def _parse_count(token: str, spec: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise ValueError(
            f"step spec {spec!r} has a non-integer count {token.strip()!r}; {_FORMATS}"
        ) from None


def parse_steps(spec: str | None, num_timesteps: int) -> list[int]:
    """Kept steps of a base process with `num_timesteps` steps, sorted, as a list of int.

    spec: see the module docstring ("", "250", "10,15,20", "ddim50"). Raises one-line
    ValueErrors for non-integer, zero or negative counts, counts larger than their
    section, and unknown formats (P14, P15).
    """
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(
            f"number of diffusion steps must be an integer >= 1, got {num_timesteps!r}"
        )
    if spec is None or spec.strip() == "":
        return list(range(num_timesteps))
    text = spec.strip()
    if text.startswith("ddim"):
        count = _parse_count(text[len("ddim") :], spec)
        if count < 1:
            raise ValueError(f"step spec {spec!r} asks for {count} steps; use 'ddimK' with K >= 1")
        if count > num_timesteps:
            raise ValueError(
                f"step spec {spec!r} asks for {count} steps but the process has only "
                f"{num_timesteps}; use at most 'ddim{num_timesteps}'"
            )
        return _ddim_steps(count, num_timesteps)
    if not text[0].isdigit() and text[0] not in "+-":
        raise ValueError(f"unknown step spec {spec!r}; {_FORMATS}")
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
    kept = parse_steps(steps, T) if steps is None or isinstance(steps, str) else list(steps)
    spaced, timestep_map = respace(diffusion, kept)
    return spaced, ModelAdapter(model, timestep_map, timestep_scale(T, rescale_timesteps))
