"""`iddpm fid` on the inputs users have: prepared data folders, image folders, .npz files,
the authors' reference batches and sample job folders (run in process)."""

from __future__ import annotations

import json
import warnings

import numpy as np
from _contract import error_lines, invoke


def _samples(path, n: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    np.savez(path, arr_0=rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8))
    return path


def _json(result) -> dict:
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_prepared_data_folder_as_ref_prints_no_warning(tmp_path) -> None:
    """The bad-input campaign's fourth finding: a memory-mapped (read-only) reference made
    PyTorch warn on stderr; now stderr holds progress bars only."""
    prepared = invoke(["prepare-data", "digits", tmp_path / "prep"])
    assert prepared.exit_code == 0, prepared.stderr
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invoke(["fid", _samples(tmp_path / "s.npz"), "--ref", tmp_path / "prep"])
    out = _json(result)
    assert not [w for w in caught if "writable" in str(w.message)], caught
    assert out["num_ref"] == 1442 and out["fid"] > 0
    assert not [line for line in error_lines(result) if "Warning" in line], result.stderr
