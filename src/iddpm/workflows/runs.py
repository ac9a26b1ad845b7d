"""Run directories and output paths as jobs see them: find, name, and check before writing.

Every check here runs before a job's first write, so a job that fails on its paths leaves
the file system as it found it (docs/design.md §4).
"""

from __future__ import annotations

import os
from pathlib import Path

from iddpm._io import TMP_PREFIX
from iddpm.checkpoint import (
    CHECKPOINT_DIR,
    METRICS_FILE,
    PLOTS_DIR,
    SAMPLES_DIR,
    RunDir,
    list_checkpoints,
    run_dir,
)


def cache_folder(run: Path, what: str) -> Path:
    """RUN/cache/<what>: where a job keeps what it computes once for a run and reuses."""
    return run_dir(run).cache(what)


def run_of(checkpoint: Path) -> RunDir:
    """The run directory a checkpoint file belongs to (RUN/checkpoints/step_*.pt -> RUN),
    as the type that names every path in it."""
    folder = checkpoint.parent
    return run_dir(folder.parent if folder.name == CHECKPOINT_DIR else folder)


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint file belongs to (RUN/checkpoints/step_*.pt -> RUN)."""
    return run_of(checkpoint).root


def has_checkpoints(run: Path) -> bool:
    """True when `run` holds at least one complete checkpoint (temporary files of an
    interrupted first save do not count)."""
    return bool(list_checkpoints(run / CHECKPOINT_DIR))


def fresh_run_dir(base: Path) -> Path:
    """`base`, or base-2, base-3, …: the first that holds no checkpoints yet."""
    candidate, k = base, 1
    while candidate.exists() and (not candidate.is_dir() or has_checkpoints(candidate)):
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    return candidate


def check_writable_dir(path: Path, flag: str) -> None:
    """`path` is, or can be created as, a directory this process may write into."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{flag} {path} is a file, not a folder; choose a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(
            f"{flag} {path} lies under {existing}, which is a file; choose another path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        if _read_only_file_system(existing):
            raise PermissionError(
                f"{flag} {path}: {existing} lies on a read-only file system; choose a folder "
                "on a writable one"
            )
        raise PermissionError(
            f"{flag} {path}: {existing} is not writable; choose a folder you can write to"
        )


def _read_only_file_system(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs on this platform
        return False


def check_output_file(path: Path, flag: str) -> None:
    """`path` can be written as a file: not a folder, and its folder is writable."""
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path} is a folder; give a file name")
    check_writable_dir(path.parent, flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"{flag} {path} exists and is read-only; choose another name")


def check_run_writable(run: Path, flag: str = "--run-dir") -> None:
    """Training can write everything it writes into `run` (its folders, the metrics log it
    appends to), checked before the first write."""
    check_writable_dir(run, flag)
    for sub in (CHECKPOINT_DIR, SAMPLES_DIR, PLOTS_DIR):
        if (run / sub).exists():
            check_writable_dir(run / sub, flag)
    metrics = run / METRICS_FILE
    if metrics.exists() and not os.access(metrics, os.W_OK):
        raise PermissionError(
            f"{flag} {run}: {METRICS_FILE} is read-only; make it writable or choose another folder"
        )


CONTINUE_HINT = "pass --resume to continue it, or choose another folder"


def check_new_run(
    run: Path, flag: str = "--run-dir", overwrite: bool = False, hint: str = CONTINUE_HINT
) -> None:
    """A new run may go into `run`: a writable folder without checkpoints (or `overwrite`).
    `hint` says what to do about a folder that holds a run."""
    check_writable_dir(run, flag)
    if has_checkpoints(run) and not overwrite:
        raise FileExistsError(f"{flag} {run} already holds a run; {hint}")


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (the same inode when both exist: links count)."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_outputs_spare_inputs(outputs: dict[str, Path], inputs: list[Path]) -> None:
    """No output (flag → path) is one of the job's input files: writing it would destroy
    the data the job reads (checked before any work)."""
    for flag, out in outputs.items():
        for inp in inputs:
            if same_file(out, inp):
                raise ValueError(
                    f"{flag} {out} is also an input of this job ({inp}) and would be "
                    "overwritten; choose another file name"
                )


def remove_stale_temporaries_of(path: Path) -> None:
    """Delete what a killed earlier writer of `path` left beside it (its atomic write's
    temporary file, named TMP_PREFIX + the file name + "." + a pid)."""
    if not path.parent.is_dir():
        return
    for entry in path.parent.glob(f"{TMP_PREFIX}{path.name}.*"):
        if entry.name[len(TMP_PREFIX) + len(path.name) + 1 :].isdigit():
            entry.unlink(missing_ok=True)
