"""What every job runs with, in one object instead of positional threading: the device,
the progress reporter, where statistics come from, whether to compile, and the cache.

A job function takes its own config (what to compute) and a `JobContext` (how to run it);
the command line builds the context from --device, --stats-*, --compile, and its progress
bars. Library callers may pass `JobContext()`: the CPU, silent, the run's cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from iddpm.workflows.cache import RunCache
from iddpm.workflows.progress import Progress, silent

MIN_IMAGES = 100  # fewer give Γ a relative standard error above ~2% on 8×8 images


@dataclass(frozen=True)
class StatsConfig:
    """Where statistics come from: `num_images` images of `data` ("" = the model's
    training data, train split), drawn with `seed`."""

    data: str = ""
    num_images: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_images < MIN_IMAGES:
            raise ValueError(
                f"--stats-images {self.num_images} is too few for a stable estimate; use at "
                f"least {MIN_IMAGES} (default 1000)"
            )


@dataclass(frozen=True)
class JobContext:
    """device: where the model runs; progress: the bars' factory; stats: the images that
    statistics (Analytic-DPM's Γ) are estimated from; compile: a torch.compile'd forward
    for the long phases (sampling, bits/dim); cache_root: the cache folder (None: the
    run's RUN/cache); use_cache: False computes everything afresh and stores nothing."""

    device: torch.device | str = "cpu"
    progress: Progress = silent
    stats: StatsConfig = field(default_factory=StatsConfig)
    compile: bool = False
    cache_root: Path | None = None
    use_cache: bool = True

    def cache(self, checkpoint: Path) -> RunCache:
        """The run cache of `checkpoint`."""
        return RunCache(checkpoint, self.cache_root, self.use_cache)

    def replace(self, **changes: Any) -> JobContext:
        return replace(self, **changes)


def context(
    device: torch.device | str = "cpu",
    progress: Progress = silent,
    **kw: Any,
) -> JobContext:
    """A JobContext from the arguments the job functions take (device, progress) and any
    of its other fields."""
    return JobContext(device=device, progress=progress, **kw)
