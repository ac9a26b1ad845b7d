"""Run directories and output paths are checked before any job writes (workflows/runs.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import save_random_run, tiny_experiment
from iddpm._io import TMP_PREFIX
from iddpm.workflows.runs import (
    check_new_run,
    check_output_file,
    check_writable_dir,
    fresh_run_dir,
    has_checkpoints,
    run_dir_of,
)


def test_run_dir_of_a_checkpoint(tmp_path: Path) -> None:
    assert run_dir_of(tmp_path / "run" / "checkpoints" / "step_1.pt") == tmp_path / "run"
    assert run_dir_of(tmp_path / "loose.pt") == tmp_path


def test_only_complete_checkpoints_make_a_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / f"{TMP_PREFIX}step_00000002.pt.99").write_bytes(b"half")
    assert not has_checkpoints(run)  # a kill inside the very first save
    check_new_run(run)  # so a new run may start here
    save_random_run(run, tiny_experiment())
    assert has_checkpoints(run)
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        check_new_run(run)
    check_new_run(run, overwrite=True)


def test_fresh_run_dir_skips_taken_names(tmp_path: Path) -> None:
    base = tmp_path / "demo"
    assert fresh_run_dir(base) == base
    save_random_run(base, tiny_experiment())
    (tmp_path / "demo-2").write_text("a file is taken too")
    assert fresh_run_dir(base) == tmp_path / "demo-3"


def test_paths_under_a_file_or_a_folder_as_file_are_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        check_writable_dir(blocker, "--out-dir")
    with pytest.raises(NotADirectoryError, match=r"lies under .*file, which is a file"):
        check_writable_dir(blocker / "sub" / "deeper", "--out-dir")
    with pytest.raises(IsADirectoryError, match=r"--out .* is a folder; give a file name"):
        check_output_file(tmp_path, "--out")
    check_output_file(tmp_path / "new" / "x.npz", "--out")  # creatable: fine
    assert not (tmp_path / "new").exists()  # checking creates nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="is not writable"):
            check_writable_dir(ro / "run", "--run-dir")
    finally:
        ro.chmod(0o700)


def test_remove_stale_temporaries_of_takes_only_that_files_leftovers(tmp_path) -> None:
    from iddpm.workflows.runs import remove_stale_temporaries_of

    for name in (".tmp-a.json.123", ".tmp-a.json.x", ".tmp-ab.json.5", "a.json"):
        (tmp_path / name).write_text("x")
    remove_stale_temporaries_of(tmp_path / "a.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".tmp-a.json.x",
        ".tmp-ab.json.5",
        "a.json",
    ]


def test_an_output_that_is_an_input_is_refused(tmp_path) -> None:
    from iddpm.workflows.runs import check_outputs_spare_inputs

    (tmp_path / "s.npz").write_bytes(b"x")
    (tmp_path / "link.npz").hardlink_to(tmp_path / "s.npz")
    with pytest.raises(ValueError, match="--save-ref"):
        check_outputs_spare_inputs({"--save-ref": tmp_path / "link.npz"}, [tmp_path / "s.npz"])
    check_outputs_spare_inputs({"--out": tmp_path / "o.json"}, [tmp_path / "s.npz"])
