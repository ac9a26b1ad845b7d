"""Training metrics: running means, loss by timestep quartile and a jsonl sink.

Nothing lives at module level: every accumulator is an object the trainer owns.
Sums are kept as float64 tensors on the values' device, so adding a batch never forces a
GPU synchronisation; `summary()` reads them once per logging interval.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from iddpm._io import read_jsonl

NUM_QUARTILES = 4
PT_BUCKETS = 50  # the importance sampler's p_t is logged summed over this many buckets of t


def timestep_quartile(t: torch.Tensor, num_timesteps: int) -> torch.Tensor:
    """Quartile index floor(4·t/T) ∈ {0, 1, 2, 3} of each code step t: [N] int64 -> [N]."""
    return torch.div(t.to(torch.int64) * NUM_QUARTILES, num_timesteps, rounding_mode="floor")


def bucketed(p: torch.Tensor, buckets: int = PT_BUCKETS) -> list[float]:
    """p [T] summed over `buckets` equal buckets of t (T buckets when T is smaller)."""
    p = p.detach().to(torch.float64).cpu()
    edges = torch.linspace(0, p.numel(), min(buckets, p.numel()) + 1).round().long()
    return [float(p[a:b].sum()) for a, b in itertools.pairwise(edges)]


class RunningMeans:
    """Means over all examples (or scalars) added since the last `summary()`.

    `add_examples(t, T, loss=…, mse=…)` takes per-example [N] tensors and also buckets the
    `loss` values into `loss_q0..q3` by t/T quartile; `add_scalar(name, v)` averages one
    value per call (e.g. the grad norm of each step).
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor | float] = {}
        self._counts: dict[str, torch.Tensor | float] = {}

    def _add(self, name: str, total: torch.Tensor | float, count: torch.Tensor | float) -> None:
        self._sums[name] = self._sums.get(name, 0.0) + total
        self._counts[name] = self._counts.get(name, 0.0) + count

    def add_examples(
        self, t: torch.Tensor, num_timesteps: int, **per_example: torch.Tensor
    ) -> None:
        """t: [N] int64 code steps; each keyword: [N] float values of one metric."""
        for name, values in per_example.items():
            if values.shape != t.shape:
                raise ValueError(
                    f"metric {name!r} has shape {tuple(values.shape)} but t has "
                    f"{tuple(t.shape)}; pass one value per example"
                )
            v = values.detach().to(torch.float64)
            self._add(name, v.sum(), v.numel())
        if "loss" in per_example:
            q = timestep_quartile(t, num_timesteps)
            v = per_example["loss"].detach().to(torch.float64)
            onehot = torch.nn.functional.one_hot(q, NUM_QUARTILES).to(torch.float64)
            sums, counts = v @ onehot, onehot.sum(0)
            for k in range(NUM_QUARTILES):
                self._add(f"loss_q{k}", sums[k], counts[k])

    def add_scalar(self, name: str, value: torch.Tensor | float) -> None:
        v = value.detach().to(torch.float64) if isinstance(value, torch.Tensor) else value
        self._add(name, v, 1.0)

    def summary(self, reset: bool = True) -> dict[str, float]:
        """{name: mean} for every metric with at least one value (empty buckets omitted)."""
        out: dict[str, float] = {}
        for name, total in self._sums.items():
            count = float(self._counts[name])
            if count > 0:
                out[name] = float(total) / count
        if reset:
            self._sums.clear()
            self._counts.clear()
        return out


class JsonlSink:
    """Appends one JSON object per line to `path` and flushes it to the OS at once."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def write(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(dict(record), sort_keys=False, allow_nan=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def read(self) -> list[dict[str, Any]]:
        """Every record written so far (for tests and reports)."""
        return read_jsonl(self.path)
