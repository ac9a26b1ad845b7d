"""Job folders: manifests that disagree are refused by field, damaged shards are redone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from iddpm.shards import MANIFEST, ShardedJob

FIELDS = {"checkpoint_sha256": "ab" * 32, "sampler": "ddim", "seed": 0, "steps": "50"}


def _job(folder, **changes) -> ShardedJob:
    fields = {**FIELDS, **{k: v for k, v in changes.items() if k in FIELDS}}
    return ShardedJob(
        folder, "sample", fields, changes.get("total", 10), changes.get("shard_size", 4)
    )


def test_shards_cover_the_indices_and_round_trip(tmp_path) -> None:
    job = _job(tmp_path / "job")
    assert job.open() is False and (tmp_path / "job" / MANIFEST).is_file()
    assert [list(job.range(k)) for k in range(job.num_shards)] == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9]
    ]  # fmt: skip
    assert job.pending() == [0, 1, 2] and job.mine(1, 2) == [1]
    job.write(1, {"x": np.arange(4), "y": np.ones((4, 2))})
    assert job.pending() == [0, 2] and not job.complete()
    np.testing.assert_array_equal(job.read(1)["x"], np.arange(4))
    assert _job(tmp_path / "job").open() is True  # the same request resumes


@pytest.mark.parametrize(
    ("change", "field"),
    [({"seed": 1}, "seed"), ({"sampler": "ancestral"}, "sampler"), ({"total": 12}, "total"),
     ({"shard_size": 5}, "shard_size"), ({"checkpoint_sha256": "cd" * 32}, "checkpoint_sha256"),
     ({"steps": "100"}, "steps")],
)  # fmt: skip
def test_a_manifest_that_disagrees_is_refused_naming_the_field(tmp_path, change, field) -> None:
    _job(tmp_path / "job").open()
    before = (tmp_path / "job" / MANIFEST).read_bytes()
    with pytest.raises(ValueError, match=f"started with {field} = ") as err:
        _job(tmp_path / "job", **change).open()
    assert "--job-dir" in str(err.value)
    assert (tmp_path / "job" / MANIFEST).read_bytes() == before


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b"",  # empty
        lambda b: b.replace(b"\x00\x00\x80?", b"\x00\x00\x00@", 1),  # a float 1.0 → 2.0
    ],
)
def test_damaged_shards_count_as_missing(tmp_path, damage) -> None:
    job = _job(tmp_path / "job")
    job.open()
    job.write(0, {"x": np.ones(4, np.float32)})
    path = job.path(0)
    path.write_bytes(damage(path.read_bytes()))
    assert job.read(0) is None and job.pending() == [0, 1, 2]
    with pytest.raises(ValueError, match="shard 0 is missing or damaged"):
        job.shards()


def test_foreign_folders_and_manifests_are_refused(tmp_path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        _job(tmp_path / "busy").open()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / MANIFEST).write_text(json.dumps({"format": "something"}))
    with pytest.raises(ValueError, match="not an iddpm job manifest"):
        _job(tmp_path / "other").open()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError):
        _job(tmp_path / "afile").open()
    with pytest.raises(ValueError, match="--shard-size"):
        _job(tmp_path / "j", shard_size=0)


def test_remove_leaves_other_files_alone(tmp_path) -> None:
    job = _job(tmp_path / "job")
    job.open()
    job.write(0, {"x": np.zeros(4)})
    job.remove()
    assert not (tmp_path / "job").exists()
