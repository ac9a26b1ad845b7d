"""The image sets `fid`, `compare` and `export` read: rows streamed from an .npz equal the
array, every layout and folder gives uint8 NHWC, labels and recorded seeds come along."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from iddpm.workflows.image_sets import open_images


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
@pytest.mark.parametrize("shape", [(20, 5, 6, 3), (20, 5, 6)])
def test_npz_rows_equal_the_array(tmp_path, save, shape) -> None:
    x = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
    save(tmp_path / "s.npz", arr_0=x, arr_1=np.arange(20) % 3)
    (tmp_path / "s.json").write_text(json.dumps({"seed": 7}))
    s = open_images(str(tmp_path / "s.npz"))
    nhwc = x.reshape(20, 5, 6, -1)
    assert (s.total, s.shape, s.seed) == (20, nhwc.shape[1:], 7)
    np.testing.assert_array_equal(s.read(3, 17), nhwc[3:17])
    np.testing.assert_array_equal(s.labels, np.arange(20) % 3)


def test_folder_reads_sorted_files_grey_or_rgb(tmp_path) -> None:
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (3, 4, 4), np.uint8)
    for i, g in enumerate(grey):
        Image.fromarray(g).save(tmp_path / f"{i}.png")
    s = open_images(str(tmp_path))
    assert s.shape == (4, 4, 1) and s.labels is None
    np.testing.assert_array_equal(s.read(0, 3)[..., 0], grey)
    Image.fromarray(rng.integers(0, 256, (4, 4, 3), np.uint8)).save(tmp_path / "9.png")
    assert open_images(str(tmp_path)).shape == (4, 4, 3)  # one RGB file: all as RGB
