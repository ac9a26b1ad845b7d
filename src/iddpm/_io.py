"""File writing and reading shared by every layer: atomic writes, JSON, jsonl (no iddpm imports).

Atomic: the bytes go to a temporary file in the target's directory, are flushed and
fsynced, renamed over the final name with `os.replace`, and the directory is fsynced. A
crash or an error at any point leaves either the old file or the new one, never a partial
one, and the temporary file is removed when the write fails (a killed process may leave
one behind: its name starts with TMP_PREFIX, and `remove_stale_temporaries` clears them).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

TMP_PREFIX = ".tmp-"


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """write(f) into a temporary file next to `path`, fsync, os.replace, fsync the dir.

    The parent directory must exist. Returns `path` as a Path.
    """
    path = Path(path)
    # A plain open() (not mkstemp) so the file gets the usual umask permissions.
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def write_text(path: str | os.PathLike[str], text: str, mkdir: bool = True) -> Path:
    """Atomically replace `path` with UTF-8 `text` (creating its folder when `mkdir`)."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats as None, tuples as lists and paths as strings, so
    `json.dumps(..., allow_nan=False)` writes standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return json_safe(value.item())  # numpy / torch scalars
    return value


def dumps(value: Any, indent: int | None = None) -> str:
    """Standard JSON text of `value` (see `json_safe`)."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike[str], value: Any, indent: int | None = None) -> Path:
    """Atomically write `value` as one JSON document plus a newline."""
    return write_text(path, dumps(value, indent) + "\n")


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every JSON object of a jsonl file, in order; [] when the file does not exist.

    A last line without its newline that does not parse (a process killed mid-write) is
    skipped; a bad line anywhere else is a one-line ValueError naming the line.
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # an unfinished last line
                continue
            raise ValueError(
                f"{path} line {number} is not JSON; repair or delete that line"
            ) from None
    return rows


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename in `folder` durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files a killed writer left in `folder`; returns them."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if entry.name.startswith(TMP_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed
