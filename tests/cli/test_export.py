"""`iddpm export`: one PNG per sample, named by index and label, exact pixels."""

from __future__ import annotations

import json

import numpy as np
from _contract import invoke
from PIL import Image


def test_npz_becomes_pngs_with_index_and_label_and_exact_pixels(tmp_path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (11, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", arr_0=rgb, arr_1=np.arange(11) % 4)
    result = invoke(["export", tmp_path / "s.npz", tmp_path / "out"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["num"] == 11
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names[0] == "000000_label0.png" and names[10] == "000010_label2.png"
    for i, name in enumerate(names):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / name)), rgb[i])
    grey = rng.integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "g.npz", arr_0=grey)
    assert invoke(["export", tmp_path / "g.npz", tmp_path / "g"]).exit_code == 0
    back = np.asarray(Image.open(tmp_path / "g" / "000002.png"))
    np.testing.assert_array_equal(back, grey[2, ..., 0])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
