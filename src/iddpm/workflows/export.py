"""The `iddpm export` job: one PNG per image of a sample set, named by index and label.

Any set `iddpm fid` reads (an .npz such as the reference code's `samples_50000x32x32x3.npz`,
a sample job folder, a data SPEC) becomes OUT/000000.png, OUT/000001.png, … or, with
labels, OUT/000000_label3.png. OUT must not exist or be empty; the files are written into a
temporary folder beside it that is renamed to OUT at the end, so OUT appears complete or
not at all.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from iddpm._io import TMP_PREFIX, fsync_dir
from iddpm.workflows import runtime
from iddpm.workflows.image_sets import ImageSet, open_images
from iddpm.workflows.progress import Progress, silent
from iddpm.workflows.runs import check_writable_dir

BATCH = 256


def png_name(index: int, label: int | None, width: int) -> str:
    return f"{index:0{width}d}" + ("" if label is None else f"_label{label}") + ".png"


def check_png_dir(out: Path, flag: str) -> None:
    """`out` can become the folder of PNGs: absent, or an empty folder we may write."""
    check_writable_dir(out, flag)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{flag} {out} is not empty; choose a new folder (or empty it)")


def write_pngs(images: ImageSet, out: Path, progress: Progress = silent) -> int:
    """Every image of the set as OUT/<index>[_label<y>].png (module docstring)."""
    tmp = out.parent / f"{TMP_PREFIX}{out.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    width = max(6, len(str(images.total - 1)))
    try:
        with progress("png files", images.total, "img") as bar:
            for start, batch in images.batches(0, images.total, BATCH):
                for i, img in enumerate(batch, start):
                    label = None if images.labels is None else int(images.labels[i])
                    pixels = img[..., 0] if img.shape[-1] == 1 else img
                    Image.fromarray(np.ascontiguousarray(pixels)).save(
                        tmp / png_name(i, label, width)
                    )
                bar.update(len(batch))
        if out.exists():
            out.rmdir()  # empty (checked before)
        os.rename(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return images.total


def export_pngs(
    samples: str, out: Path, device: torch.device | str = "cpu", progress: Progress = silent
) -> dict[str, Any]:
    """The `iddpm export` job."""
    check_png_dir(out, "OUT")
    images = open_images(samples)
    if runtime.is_main():
        write_pngs(images, out, progress)
    return {"samples": samples, "out": str(out), "num": images.total,
            "labels": images.labels is not None}  # fmt: skip
