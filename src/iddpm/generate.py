"""Sampling to arrays and `.npz`.

Sample i depends only on (seed, i): each sample draws all its noise from its own generator,
so results do not depend on the batch size or the number of ranks. `draw_indices` draws
any set of global indices; under torchrun a job gives each rank a contiguous block of
indices (`distributed.rank_block`) and `gather`s them in order. The request (which model
function, which process, which sampler) is built once by `workflows.plan.SamplingPlan`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iddpm import distributed
from iddpm._io import atomic_write
from iddpm._tensor import to_uint8
from iddpm.diffusion import registry, samplers
from iddpm.diffusion.gaussian import GaussianDiffusion


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


def draw_indices(
    sampler: str,
    model_fn: Callable[..., torch.Tensor],
    diffusion: GaussianDiffusion,
    indices: Sequence[int],
    *,
    seed: int,
    image_shape: tuple[int, int, int],
    options: Any = None,
    labels: np.ndarray | None = None,
    clip_denoised: bool = True,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> Samples:
    """Samples of the global `indices` (this process only, no gathering) with registered
    sampler `sampler` and its options object: sample i draws all its noise from the
    generator of (seed, i), so it depends on nothing else. image_shape: (C, H, W);
    labels: one class per index for a class-conditional model. `progress(n)` is called
    after each finished batch."""
    indices = list(indices)
    out: list[np.ndarray] = []
    for lo in range(0, len(indices), batch_size):
        idx = indices[lo : lo + batch_size]
        gens = samplers.per_sample_generators(seed, idx, device)
        kwargs = {}
        if labels is not None:
            kwargs["y"] = torch.as_tensor(labels[lo : lo + len(idx)], device=device)
        common = dict(
            shape=(len(idx), *image_shape),
            generator=gens,
            clip_denoised=clip_denoised,
            model_kwargs=kwargs,
            device=device,
        )
        with torch.no_grad():
            x = registry.sample(sampler, model_fn, diffusion, options=options, **common)
        out.append(to_uint8(x))
        if progress is not None:
            progress(len(idx))
    c, h, w = image_shape
    images = np.concatenate(out) if out else np.zeros((0, h, w, c), np.uint8)
    return Samples(images, labels)


def gather(samples: Samples) -> Samples:
    """Every rank's block concatenated in rank order (= global index order) on all ranks."""
    return _gather(samples.images, samples.labels)


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
