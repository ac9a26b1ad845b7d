"""`iddpm fid` on the inputs users have: prepared data folders, image folders, .npz files,
the authors' reference batches and sample job folders (run in process)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from _contract import error_lines, invoke
from PIL import Image


def _samples(path, n: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    np.savez(path, arr_0=rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8))
    return path


def _json(result) -> dict:
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # end to end through the CLI: seconds
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


def _digits(n: int, split: str = "test") -> np.ndarray:
    from iddpm.data.bundled import load_digits

    return load_digits(split).images[:n]


def test_image_folder_npz_and_reference_batch_agree(tmp_path) -> None:
    """The same 60 images as PNG files and as an .npz score the same against the same
    reference given as a data SPEC and as a reference batch (arr_0 + mu/sigma)."""
    images = _digits(60)
    np.savez(tmp_path / "s.npz", arr_0=images)
    (tmp_path / "pngs").mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img[..., 0], mode="L").save(tmp_path / "pngs" / f"{i:05d}.png")
    from_npz = _json(invoke(["fid", tmp_path / "s.npz", "--ref", "digits"]))
    from_pngs = _json(invoke(["fid", tmp_path / "pngs", "--ref", "digits"]))
    for key in ("fid", "sfid", "inception_score", "kid", "precision", "recall"):
        assert from_npz[key] == from_pngs[key], key
    assert (tmp_path / "pngs.fid.json").is_file() and not (tmp_path / "pngs.fid.job").exists()
    # a reference batch: stored statistics for FID/sFID, its images for P/R and KID
    saved = _json(
        invoke(["fid", tmp_path / "s.npz", "--ref", "digits", "--save-ref", tmp_path / "r.npz",
                "--out", tmp_path / "o.json"])
    )  # fmt: skip
    with np.load(tmp_path / "r.npz") as f:
        stats = {k: f[k] for k in ("mu", "sigma", "mu_s", "sigma_s")}
    np.savez(tmp_path / "batch.npz", arr_0=_digits(1442, "train"), **stats)
    batch = _json(
        invoke(["fid", tmp_path / "s.npz", "--ref", tmp_path / "batch.npz", "--out",
                tmp_path / "b.json"])
    )  # fmt: skip
    assert batch["fid"] == pytest.approx(saved["fid"], rel=1e-9)
    assert batch["precision"] == saved["precision"] and batch["kid"] == saved["kid"]
    np.savez(tmp_path / "stats.npz", **stats)
    only = _json(
        invoke(["fid", tmp_path / "s.npz", "--ref", tmp_path / "stats.npz", "--out",
                tmp_path / "c.json"])
    )  # fmt: skip
    assert only["fid"] == pytest.approx(saved["fid"], rel=1e-9) and only["precision"] is None
    assert any("need reference images" in note for note in only["notes"])


@pytest.mark.slow  # end to end through the CLI: seconds
def test_a_killed_feature_pass_resumes_to_the_same_bytes(tmp_path) -> None:
    """Shards of an interrupted pass (here: shard 1 of 3 missing, shard 2 truncated) are
    redone; the summary is bitwise that of an uninterrupted run, and --job-dir is kept."""
    np.savez(tmp_path / "s.npz", arr_0=_digits(90))
    args = ["fid", tmp_path / "s.npz", "--ref", "digits", "--shard-size", "30", "--bootstrap", "4"]
    whole = invoke([*args, "--out", tmp_path / "whole.json"])
    assert whole.exit_code == 0, whole.stderr
    job = tmp_path / "job"
    first = invoke([*args, "--job-dir", job, "--out", tmp_path / "first.json"])
    assert first.exit_code == 0 and sorted(p.name for p in (job / "samples").iterdir()) == [
        "manifest.json", "shard-00000.npz", "shard-00001.npz", "shard-00002.npz"
    ]  # fmt: skip
    (job / "samples" / "shard-00001.npz").unlink()
    shard = job / "samples" / "shard-00002.npz"
    shard.write_bytes(shard.read_bytes()[:100])
    (job / "reference" / "shard-00000.npz").unlink()  # the reference pass resumes too
    again = invoke([*args, "--job-dir", job, "--out", tmp_path / "again.json"])
    assert again.exit_code == 0, again.stderr
    strip = lambda p: {k: v for k, v in json.loads(p.read_text()).items() if k != "job_dir"}  # noqa: E731
    assert strip(tmp_path / "again.json") == strip(tmp_path / "whole.json")
    other = invoke([*args[:-1], "5", "--job-dir", job, "--out", tmp_path / "x.json"])
    assert other.exit_code == 0  # bootstrap is not part of the feature pass: same shards
    changed = invoke(["fid", tmp_path / "s.npz", "--ref", "digits", "--shard-size", "45",
                      "--job-dir", job, "--out", tmp_path / "y.json"])  # fmt: skip
    assert changed.exit_code == 2 and "shard_size" in changed.stderr


@pytest.mark.slow  # end to end through the CLI: seconds
def test_a_sample_job_folder_scores_like_its_npz(random_run, tmp_path) -> None:
    run, _ = random_run
    sample = invoke(["sample", run, "--num", "12", "--steps", "3", "--shard-size", "5",
                     "--out", tmp_path / "s.npz", "--job-dir", tmp_path / "job"])  # fmt: skip
    assert sample.exit_code == 0, sample.stderr
    a = _json(invoke(["fid", tmp_path / "s.npz", "--ref", "digits", "--out", tmp_path / "a.json"]))
    b = _json(invoke(["fid", tmp_path / "job", "--ref", "digits", "--out", tmp_path / "b.json"]))
    for key in ("fid", "sfid", "inception_score", "kid", "precision", "recall"):
        assert a[key] == b[key], key
