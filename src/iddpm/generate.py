"""Sampling to arrays, `.npz` and PNG grids.

Sample i depends only on (seed, i): each sample draws all its noise from its own generator,
so results do not depend on the batch size or the number of ranks. Under torchrun the
indices are split into contiguous blocks, one per rank, and gathered on rank 0 in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iddpm import distributed
from iddpm._io import atomic_write
from iddpm._tensor import to_uint8
from iddpm.build import spaced
from iddpm.config import ExperimentConfig, SampleConfig
from iddpm.diffusion import registry, samplers


@dataclass
class Samples:
    """uint8 images [N, H, W, C] and int64 labels [N] (class-conditional models only)."""

    images: np.ndarray
    labels: np.ndarray | None


def class_labels(
    indices: range, num_classes: int | None, class_label: int | None
) -> np.ndarray | None:
    """Label of each sample: the requested class, or all classes round-robin by index."""
    if num_classes is None:
        if class_label is not None:
            raise ValueError("--class was given but the model is not class-conditional; drop it")
        return None
    if class_label is not None:
        if not 0 <= class_label < num_classes:
            raise ValueError(
                f"--class {class_label} is outside the model's classes 0..{num_classes - 1}"
            )
        return np.full(len(indices), class_label, dtype=np.int64)
    return np.asarray([i % num_classes for i in indices], dtype=np.int64)


def sample_images(
    model: torch.nn.Module,
    config: ExperimentConfig,
    cfg: SampleConfig,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
    options: Any = None,
) -> Samples:
    """Draw `cfg.num` samples from `model` trained with `config` (each rank draws its
    block; all ranks return the gathered set) with the step spec `cfg.steps` and the
    sampler `cfg.sampler` of the registry with `cfg.sampler_options` (or the ready options
    object `options`, e.g. with statistics estimated from data). `progress(n)` is called
    after each finished batch."""
    mcfg, dcfg = config.model, config.diffusion
    if options is None:  # fails before any work
        options = registry.make_options(cfg.sampler, cfg.sampler_options)
    diffusion, model_fn = spaced(model, dcfg, cfg.steps)
    mine = distributed.rank_block(cfg.num, distributed.rank(), distributed.world_size())
    labels = class_labels(mine, mcfg.num_classes, cfg.class_label)
    shape = (mcfg.in_channels, mcfg.image_size, mcfg.image_size)
    out: list[np.ndarray] = []
    for lo in range(0, len(mine), cfg.batch_size):
        idx = list(mine[lo : lo + cfg.batch_size])
        gens = samplers.per_sample_generators(cfg.seed, idx, device)
        kwargs = {}
        if labels is not None:
            kwargs["y"] = torch.as_tensor(labels[lo : lo + len(idx)], device=device)
        common = dict(
            shape=(len(idx), *shape),
            generator=gens,
            clip_denoised=cfg.clip_denoised,
            model_kwargs=kwargs,
            device=device,
        )
        with torch.no_grad():
            x = registry.sample(cfg.sampler, model_fn, diffusion, options=options, **common)
        out.append(to_uint8(x))
        if progress is not None:
            progress(len(idx))
    images = np.concatenate(out) if out else np.zeros((0, *shape[1:], shape[0]), np.uint8)
    return _gather(images, labels)


def _gather(images: np.ndarray, labels: np.ndarray | None) -> Samples:
    """Concatenate every rank's block in rank order (= global index order)."""
    if distributed.world_size() == 1:
        return Samples(images, labels)
    dev = distributed.device()  # nccl gathers GPU tensors only

    def gather(a: np.ndarray) -> np.ndarray:
        flat = torch.from_numpy(np.ascontiguousarray(a).reshape(-1)).to(dev)
        return distributed.all_gather_1d(flat).cpu().numpy().reshape(-1, *a.shape[1:])

    return Samples(gather(images), None if labels is None else gather(labels))


def save_npz(path: str | Path, samples: Samples) -> Path:
    """Write the layout the reference evaluation tools read: uint8 NHWC under `arr_0`,
    labels under `arr_1` when present."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"arr_0": samples.images}
    if samples.labels is not None:
        arrays["arr_1"] = samples.labels
    return atomic_write(path, lambda f: np.savez(f, **arrays))
