"""Full disks, file-size limits and read-only folders or file systems meet the error
contract: one line naming the file and what to do, exit 2, no file changed or added (a
resumed training that cannot save its first checkpoint leaves config.json, metrics.jsonl
and the checkpoints as they were). A read-only run still serves jobs that write their
outputs elsewhere, without its cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from _contract import TINY_TRAIN, check_failure, check_unchanged, invoke, tree_state
from _env_cases import CASES

DRIVER = Path(__file__).with_name("_env_cases.py")


def _private_mounts() -> bool:
    """True when this process may mount in a private namespace of a child (root + unshare)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def outcomes() -> dict:
    """Every case of _env_cases.py, run once in one child process."""
    cmd = [sys.executable, str(DRIVER)]
    if _private_mounts():
        cmd = ["unshare", "--mount", *cmd, "--mount"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_disk_and_file_system_errors(name: str, outcomes: dict) -> None:
    out = outcomes[name]
    if "skip" in out:
        pytest.skip(out["skip"])
    assert out["traceback"] is None, out["traceback"]
    if CASES[name][2] is None:  # works without writing into the read-only run
        assert out["exit_code"] == 0, out["stderr"][-2000:]
        check_unchanged(out["before"], out["after"])
        return
    result = SimpleNamespace(
        exception=None, **{k: out[k] for k in ("exit_code", "stdout", "stderr")}
    )
    line = check_failure(result, 2, CASES[name][2])
    assert "(run/checkpoints/step_00000003.pt)" in line or "resumed" not in name
    check_unchanged(out["before"], out["after"])


def _ignores_permissions() -> bool:
    """True when this process writes into folders without write permission (root, or
    CAP_DAC_OVERRIDE), so a read-only folder cannot be simulated by chmod."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp).chmod(0o555)
        try:
            (Path(tmp) / "probe").touch()
        except PermissionError:
            return False
        finally:
            Path(tmp).chmod(0o755)
    return True


NOT_ROOT = pytest.mark.skipif(
    _ignores_permissions(), reason="this process (root) writes into folders without permission"
)


@NOT_ROOT
@pytest.mark.parametrize(
    "args",
    [
        ["train", *TINY_TRAIN, "--run-dir", "ro/new"],
        ["train", "--resume", "--run-dir", "ro", "--steps", "4"],
        ["sample", "ro", "--num", "2", "--steps", "5"],
        ["nll", "ro", "--num-images", "2"],
    ],
    ids=["new run", "resume", "sample into the run", "nll into the run"],
)
def test_folder_without_write_permission(args, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert invoke(["train", *TINY_TRAIN, "--run-dir", "ro"]).exit_code == 0
    for folder in [tmp_path / "ro", *(p for p in (tmp_path / "ro").rglob("*") if p.is_dir())]:
        folder.chmod(0o555)
    before = tree_state(tmp_path)
    try:
        result = invoke(args)
    finally:
        after = tree_state(tmp_path)
        for folder in (tmp_path / "ro").rglob("*"):
            if folder.is_dir():
                folder.chmod(0o755)
        (tmp_path / "ro").chmod(0o755)
    check_failure(result, 2, "not writable")
    check_unchanged(before, after)
