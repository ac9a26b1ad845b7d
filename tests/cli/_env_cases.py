"""Full disk, file-size limit and read-only file system: cases that change the process or
the mounts, so they run in a child process (`python _env_cases.py [--mount]`), which prints
one JSON object {case: outcome} on its last line for `test_disk_errors.py` to judge.

- file-size limit: RLIMIT_FSIZE lowered in this child around the command (Python ignores
  SIGXFSZ, so writes past the limit fail with EFBIG as under `ulimit -f`);
- full disk: the case's folder is a tmpfs just too small for what the command writes;
- read-only file system: the case's folder bind-mounted read-only.
Mounting needs `--mount`, given only when the parent started this child in a private mount
namespace (`unshare --mount`, as root), so nothing outside it ever sees the mounts;
without it those cases report why they were skipped.
"""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

from _contract import TINY_TRAIN, invoke, tree_state

RESUME = ["train", "--resume", "--run-dir", "run", "--steps", "4"]
ELSEWHERE = "../elsewhere"  # beside the case's folder: outside its mounts, writable
# name -> (environment, args, hint the one line must hold; None: the command must succeed,
# writing nothing inside the case's folder)
CASES: dict[str, tuple[str, list[str], str | None]] = {
    "file-size limit: resumed training's first checkpoint": ("fsize", RESUME, "ulimit -f"),
    "file-size limit: sample save": (
        "fsize",
        ["sample", "run", "--num", "400", "--steps", "5", "--out", "s.npz"],
        "ulimit -f",
    ),
    "full disk: resumed training's first checkpoint": ("full", RESUME, "disk is full"),
    "full disk: sample save": (
        "full",
        ["sample", "run", "--num", "400", "--steps", "5", "--out", "s.npz"],
        "disk is full",
    ),
    "read-only fs: new training run": (
        "ro",
        ["train", *TINY_TRAIN, "--run-dir", "new"],
        "read-only",
    ),
    "read-only fs: resume": ("ro", RESUME, "read-only"),
    "read-only fs: sampling into the run": (
        "ro",
        ["sample", "run", "--num", "2", "--steps", "5"],
        "read-only",
    ),
    "read-only fs: nll into the run": ("ro", ["nll", "run", "--num-images", "2"], "read-only"),
    "read-only fs: prepare-data": ("ro", ["prepare-data", "digits", "prepared"], "read-only"),
    # a read-only run is used without its cache (statistics, step costs)
    "read-only fs: bound-optimal steps written elsewhere": (
        "ro",
        ["steps", "run", "--nfe", "3", "--num-images", "32", "--out-dir", ELSEWHERE],
        None,
    ),
    "read-only fs: analytic samples written elsewhere": (
        "ro",
        [
            "sample",
            "run",
            "--num",
            "2",
            "--steps",
            "5",
            "--sampler",
            "analytic",
            "--stats-images",
            "100",
            "--out",
            f"{ELSEWHERE}/s.npz",
        ],
        None,
    ),
}


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _used_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@contextlib.contextmanager
def environment(name: str, case: Path, run: Path, can_mount: bool) -> Iterator[None]:
    """Make `case` hold a copy of the trained `run` (case/run) inside the case's
    environment, for the duration of the block."""
    kind = CASES[name][0]
    if kind in ("full", "ro") and not can_mount:
        raise _Skip("needs a private mount namespace where tmpfs/bind mounts work (root)")
    if kind == "full":
        # room for the run and half a checkpoint more: the next checkpoint cannot fit
        ckpt = max(f.stat().st_size for f in (run / "checkpoints").glob("*.pt"))
        size = _used_bytes(run) + 64 * 4096 + ckpt // 2
        _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(case))
    shutil.copytree(run, case / "run")
    if kind == "full" and "sample" in name:  # leave ~16 KiB: too little for 400 samples
        free = shutil.disk_usage(case).free - 16 * 1024
        (case / "filler").write_bytes(b"\0" * max(free, 0))
    if kind == "ro":
        _mount("--bind", str(case), str(case))
        _mount("-o", "remount,ro,bind", str(case))
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    if kind == "fsize":
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        if kind in ("full", "ro"):
            subprocess.run(["umount", str(case)], check=False, capture_output=True)


class _Skip(Exception):
    pass


def run_case(name: str, root: Path, run: Path, can_mount: bool) -> dict:
    """The outcome of one case: exit code, output, traceback (if any), tree hashes."""
    case = root / f"case{list(CASES).index(name)}"
    case.mkdir()
    try:
        with environment(name, case, run, can_mount), contextlib.chdir(case):
            before = tree_state(case)
            result = invoke(CASES[name][1])
            after = tree_state(case)
    except _Skip as e:
        return {"skip": str(e)}
    exc = result.exception
    tb = None
    if exc is not None and not isinstance(exc, SystemExit):
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "exit_code": result.exit_code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "traceback": tb,
        "before": before,
        "after": after,
    }


def _can_mount(root: Path) -> bool:
    """Whether tmpfs and bind mounts work here (they may not, even for root, in a
    container without CAP_SYS_ADMIN)."""
    probe = root / "probe"
    probe.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe))
    except (OSError, subprocess.CalledProcessError):
        return False
    subprocess.run(["umount", str(probe)], check=False, capture_output=True)
    return True


def main(argv: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        can_mount = "--mount" in argv and _can_mount(root)
        result = invoke(["train", *TINY_TRAIN, "--run-dir", root / "template"])
        assert result.exit_code == 0, result.stderr
        return {name: run_case(name, root, root / "template", can_mount) for name in CASES}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
