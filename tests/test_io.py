"""Atomic writes, standard JSON and the jsonl reader (src/iddpm/_io.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from iddpm._io import (
    TMP_PREFIX,
    atomic_write,
    dumps,
    json_safe,
    read_jsonl,
    remove_stale_temporaries,
    write_csv,
    write_json,
)


def test_atomic_write_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def fail(f) -> None:
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_json_is_standard_with_non_finite_numbers_as_null(tmp_path: Path) -> None:
    value = {"a": math.nan, "b": (1, math.inf), "c": tmp_path, "d": np.float64(2.5),
             "e": torch.tensor(3)}  # fmt: skip
    assert json_safe(value) == {"a": None, "b": [1, None], "c": str(tmp_path), "d": 2.5, "e": 3}
    assert json.loads(dumps(value))["b"] == [1, None]
    path = write_json(tmp_path / "sub" / "r.json", {"x": math.nan})
    assert path.read_text() == '{"x": null}\n'


def test_jsonl_reader_skips_only_an_unfinished_last_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    assert read_jsonl(path) == []
    path.write_text('{"step": 1}\n{"step": 2}\n{"ste')  # killed mid-write
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n{oops\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON; repair or delete that line"):
        read_jsonl(path)


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / f"{TMP_PREFIX}step_1.pt.123").write_bytes(b"x")
    (tmp_path / "step_00000001.pt").write_bytes(b"y")
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [f"{TMP_PREFIX}step_1.pt.123"]
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000001.pt"]


def test_csv_tables_are_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import csv

    path = write_csv(tmp_path / "t.csv", ["a", "b"], [[1, "x,y"], [2.5, ""]])
    assert list(csv.reader(path.open(newline=""))) == [["a", "b"], ["1", "x,y"], ["2.5", ""]]
    # the writer goes through atomic_write: a failure keeps the old table
    monkeypatch.setattr(
        "iddpm._io.os.replace", lambda *a: (_ for _ in ()).throw(OSError(28, "full"))
    )
    with pytest.raises(OSError):
        write_csv(path, ["c"], [[3]])
    assert path.read_text().startswith("a,b")
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]
