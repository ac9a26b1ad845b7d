"""`iddpm compare`: paired differences with intervals and plain verdicts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _contract import invoke

from iddpm.data.bundled import load_digits


def _json(result) -> dict:
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # four feature passes and the digits reference twice: ~10 s
def test_sample_sets_same_set_is_no_difference_and_degraded_set_loses(tmp_path) -> None:
    images = load_digits("test").images[:80]
    noisy = np.clip(images.astype(int) + np.random.default_rng(0).integers(0, 90, images.shape),
                    0, 255).astype(np.uint8)  # fmt: skip
    for name, arr in (("a", images), ("same", images), ("noisy", noisy)):
        np.savez(tmp_path / f"{name}.npz", arr_0=arr)
    args = ["--ref", "digits", "--bootstrap", "20"]
    same = _json(invoke(["compare", tmp_path / "a.npz", tmp_path / "same.npz", *args]))
    assert same["metrics"]["fid"]["a_minus_b"]["estimate"] == 0.0
    assert all(m["verdict"].startswith("no significant") for m in same["metrics"].values())
    worse = _json(invoke(["compare", tmp_path / "a.npz", tmp_path / "noisy.npz", *args]))
    assert worse["metrics"]["fid"]["verdict"].startswith("A is better")
    assert (tmp_path / "a_vs_noisy.compare.json").is_file()
    assert not list(tmp_path.glob("*.job"))  # the feature shards are gone


def test_per_image_bits_compare_paired(tmp_path) -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(3.0, 0.5, 400)  # image-to-image spread dominates ...
    np.savez(tmp_path / "a.npz", bpd=base, seed=0)
    np.savez(tmp_path / "b.npz", bpd=base + 0.01 + rng.normal(0, 0.01, 400), seed=0)
    out = _json(invoke(["compare", tmp_path / "a.npz", tmp_path / "b.npz"]))
    bpd = out["metrics"]["bpd"]
    # ... but pairing removes it: a 0.01 difference is resolved, unpaired it would not be
    assert bpd["verdict"].startswith("A is better") and bpd["unpaired_std"] > 0.02
    assert bpd["a_minus_b"]["std"] < 0.001
