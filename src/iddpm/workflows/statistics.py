"""What some samplers and bounds estimate from a model on data, cached in the run directory.

- Sampler options marked `cli: False` (Analytic-DPM's Γ_n = E‖ε_θ‖²/d per step) come from
  the registry entry's `from_data` on M training images, once per (checkpoint, step
  spacing, M, seed), stored as RUN/cache/sampler_stats/<checkpoint>-<key>.json.
- Reverse-variance tables for the bound (`--sigma`): the model's own, Analytic-DPM's, or
  a fixed one, for any model.

A stored file names the checkpoint (its SHA-256), the kept steps, M and the seed; one that
does not match what is asked is a one-line error and is never overwritten.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from iddpm._io import write_json
from iddpm._tensor import to_model_range
from iddpm.build import LoadedModel, spaced
from iddpm.config import SampleConfig
from iddpm.diffusion import registry
from iddpm.diffusion.analytic import analytic_variance
from iddpm.diffusion.gaussian import GaussianDiffusion
from iddpm.workflows import runtime
from iddpm.workflows.data import data_for_model
from iddpm.workflows.progress import Progress, silent
from iddpm.workflows.runs import cache_folder, run_dir_of

MIN_IMAGES = 100  # fewer give Γ a relative standard error above ~2% on 8×8 images
SIGMAS = ("model", "analytic", "fixed-small", "fixed-large")


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


def checkpoint_digest(path: Path) -> str:
    """SHA-256 of a checkpoint file (hex): what cached statistics belong to. Hashed once per
    process for a file of unchanged inode, size and mtime (a sweep asks for it at every row,
    and a large model's checkpoint takes seconds to read; checkpoints are replaced by
    rename, so a new one is a new inode)."""
    st = Path(path).stat()
    return _file_digest(str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, inode: int, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _kept(model_fn: Any, diffusion: GaussianDiffusion) -> list[int]:
    return [int(s) for s in model_fn.original_steps(torch.arange(diffusion.num_timesteps))]


def cache_path(loaded: LoadedModel, what: str, meta: dict[str, Any], suffix: str = ".json") -> Path:
    """RUN/cache/<what>/<checkpoint>-<key><suffix>, the key a digest of `meta` (what the
    cached values depend on; the file stores `meta` too, checked when it is read)."""
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_folder(run_dir_of(loaded.checkpoint), what)
    return folder / f"{loaded.checkpoint.stem}-{key}{suffix}"


def _load_cached(path: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"cached statistics {path} are unreadable; delete the file") from None
    if not isinstance(stored, dict) or stored.get("meta") != meta:
        raise ValueError(
            f"cached statistics {path} belong to another checkpoint, step spacing or image "
            "set; delete the file to estimate them again"
        )
    return stored["values"]


def _store(path: Path, meta: dict[str, Any], values: dict[str, Any]) -> bool:
    """Best effort: a run directory that is not writable is used without a cache."""
    if not runtime.is_main():
        return False
    try:
        write_json(path, {"meta": meta, "values": values})
    except OSError:
        return False
    return True


def _training_images(loaded: LoadedModel, stats: StatsConfig, device: torch.device | str):
    ds = data_for_model(loaded.config, stats.data or None, "train", stats.num_images)
    if len(ds) < MIN_IMAGES:
        raise ValueError(
            f"the training data has {len(ds)} images; statistics need at least {MIN_IMAGES}: "
            "pass more data with --stats-data"
        )
    kwargs = {} if ds.labels is None else {"y": torch.as_tensor(ds.labels, device=device)}
    return to_model_range(ds.images).to(device), kwargs


def sampler_options(
    loaded: LoadedModel,
    cfg: SampleConfig,
    device: torch.device | str,
    stats: StatsConfig | None = None,
    progress: Progress = silent,
) -> Any:
    """The options object of cfg's sampler: its flags, plus what it estimates from data
    (cached). For samplers without such options this is `registry.make_options`."""
    options = registry.make_options(cfg.sampler, cfg.sampler_options)
    entry = registry.get(cfg.sampler)
    if entry.from_data is None:
        return options
    stats = stats or StatsConfig()
    diffusion, model_fn = spaced(loaded.model, loaded.config.diffusion, cfg.steps)
    meta = {
        "sampler": cfg.sampler,
        "checkpoint_sha256": checkpoint_digest(loaded.checkpoint),
        "steps": _kept(model_fn, diffusion),
        "num_images": stats.num_images,
        "data": stats.data or loaded.config.train.data,
        "seed": stats.seed,
    }
    path = cache_path(loaded, "sampler_stats", meta)
    values = _load_cached(path, meta)
    if values is None:
        x0, kwargs = _training_images(loaded, stats, device)
        with progress(f"{cfg.sampler}: statistics of {len(x0)} images", None, "task"):
            estimated = entry.from_data(
                model_fn, diffusion, x0, seed=stats.seed, model_kwargs=kwargs
            )
        values = {
            f.name: getattr(estimated, f.name)
            for f in entry.option_fields()
            if not f.metadata.get("cli", True)
        }
        _store(path, meta, values)
    return dataclasses.replace(options, **values)


def reverse_variance(
    loaded: LoadedModel,
    steps: str,
    sigma: str,
    device: torch.device | str,
    stats: StatsConfig | None = None,
    progress: Progress = silent,
) -> torch.Tensor | None:
    """The [K] reverse-variance table of the K-step process for `--sigma`: None for the
    model's own (learned or fixed), Analytic-DPM's (Γ from training images, cached like
    the `analytic` sampler's), or fixed-small β̃ / fixed-large β for any model."""
    if sigma not in SIGMAS:
        raise ValueError(f"unknown --sigma {sigma!r}; choose one of: {', '.join(SIGMAS)}")
    if sigma == "model":
        return None
    diffusion, _ = spaced(loaded.model, loaded.config.diffusion, steps)
    if sigma == "fixed-small":
        return torch.exp(diffusion.posterior_log_variance_clipped)
    if sigma == "fixed-large":
        return diffusion.fixed_large_variance.clone()
    cfg = SampleConfig(steps=steps, sampler="analytic")
    options = sampler_options(loaded, cfg, device, stats, progress)
    return analytic_variance(diffusion, options.eps_moments)
