"""TensorBoard events of a run (`--log tensorboard`): what metrics.jsonl holds, as scalars,
the importance sampler's p_t as a histogram over t, and sample grids as images.

tensorboardX writes the events (no TensorFlow, no torchvision; numpy and protobuf only).
It is the optional extra `iddpm[tensorboard]` and is imported only when a logger is made,
so the library runs without it. Scalars are grouped by what they measure: train/loss,
eval/heldout_bpd, fid/fid, … (the metrics.jsonl key with its prefix turned into a folder).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

EXTRA = "tensorboard"
FOLDER = "tensorboard"


def _tensorboardx() -> Any:
    try:
        import tensorboardX
    except ModuleNotFoundError:
        raise ImportError(
            f"--log tensorboard needs the optional extra: pip install 'iddpm[{EXTRA}]' "
            "(tensorboardX)"
        ) from None
    return tensorboardX


def check_available() -> None:
    """One-line ImportError naming the extra when tensorboardX is not installed."""
    _tensorboardx()


def tag_of(key: str) -> str:
    """metrics.jsonl key -> TensorBoard tag: eval_heldout_bpd -> eval/heldout_bpd,
    fid -> fid/fid, loss -> train/loss."""
    for prefix in ("eval", "fid"):
        if key == prefix or key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1 :] or key}"
    return f"train/{key}"


class TensorBoardLogger:
    """Writes every numeric value of each metrics record at its step (lists: p_t as a
    histogram over t; other lists are left to metrics.jsonl). `purge_step`: on resume, the
    step of the checkpoint, so events past it from the interrupted run are dropped."""

    def __init__(self, log_dir: str | Path, num_timesteps: int, purge_step: int | None = None):
        tbx = _tensorboardx()
        self.num_timesteps = num_timesteps
        self.writer = tbx.SummaryWriter(logdir=str(log_dir), purge_step=purge_step or None)

    def write(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        for key, value in record.items():
            if key == "step" or isinstance(value, bool):
                continue
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(tag_of(key), float(value), step)
            elif key == "p_t" and isinstance(value, list) and value:
                self._p_t(value, step)
        self.writer.flush()

    def _p_t(self, p: list[float], step: int) -> None:
        counts = np.asarray(p, dtype=np.float64)
        edges = np.linspace(0, self.num_timesteps, len(counts) + 1)
        centres = (edges[:-1] + edges[1:]) / 2
        self.writer.add_histogram_raw(
            "train/p_t",
            min=0.0,
            max=float(self.num_timesteps),
            num=float(counts.sum()),
            sum=float((counts * centres).sum()),
            sum_squares=float((counts * centres**2).sum()),
            bucket_limits=edges[1:].tolist(),
            bucket_counts=counts.tolist(),
            global_step=step,
        )

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """uint8 [H, W, C] (a sample grid)."""
        self.writer.add_image(tag, image, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
