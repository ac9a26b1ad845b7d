"""File writing and reading shared by every layer: atomic writes, JSON, jsonl (no iddpm imports).

Atomic: the bytes go to a temporary file in the target's directory, are flushed and
fsynced, renamed over the final name with `os.replace`, and the directory is fsynced. A
crash or an error at any point leaves either the old file or the new one, never a partial
one, and the temporary file is removed when the write fails (a killed process may leave
one behind: its name starts with TMP_PREFIX, and `remove_stale_temporaries` clears them).

A failed write raises the OSError of the disk (full disk, file-size limit, read-only file
system, …) naming the target file, even when the writer turned it into something else
(torch.save's zip writer reports a full disk as a RuntimeError about stream positions).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

TMP_PREFIX = ".tmp-"


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """write(f) into a temporary file next to `path`, fsync, os.replace, fsync the dir.

    The parent directory must exist. Returns `path` as a Path.
    """
    path = Path(path)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{os.getpid()}"
    raw = None
    try:
        # FileIO, as open() uses (umask permissions), but remembering the disk's error
        raw = _RecordingFileIO(tmp, "w")
        with io.BufferedWriter(raw) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        recorded = raw.error if raw is not None and isinstance(e, Exception) else None
        error = recorded if recorded is not None else e
        if isinstance(error, OSError):
            raise _naming(error, path) from None
        raise
    fsync_dir(path.parent)
    return path


class _RecordingFileIO(io.FileIO):
    """A FileIO that keeps the first OSError of a write, for writers that swallow it."""

    error: OSError | None = None

    def write(self, b: Any) -> int | None:
        try:
            return super().write(b)
        except OSError as e:
            self.error = self.error or e
            raise


def _naming(error: OSError, path: Path) -> OSError:
    """`error` with the file name the user knows (not the temporary one)."""
    if error.errno is None:
        return error
    return type(error)(error.errno, error.strerror or os.strerror(error.errno), str(path))


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


def write_csv(
    path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> Path:
    """Atomically replace `path` with a CSV table: the header row, then `rows`."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, text.getvalue())


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


def truncate_jsonl(path: str | os.PathLike[str], keep: Callable[[dict[str, Any]], bool]) -> None:
    """Cut a jsonl log in place before its first line that `keep` rejects, does not parse
    or lacks its newline (a writer killed mid-line); no-op when nothing goes or the file
    is missing. Truncation needs no free space and is one step, so a full disk or a crash
    cannot leave a half-written log."""
    path = Path(path)
    if not path.exists():
        return
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                row = json.loads(raw)
            except ValueError:
                row = None
            if not raw.endswith(b"\n") or (
                raw.strip() and not (isinstance(row, dict) and keep(row))
            ):
                break
            offset += len(raw)
    if offset < path.stat().st_size:
        os.truncate(path, offset)


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


def load_tensors(
    path: str | os.PathLike[str], what: str, fix: str, map_location: Any = "cpu"
) -> Any:
    """`torch.load(path, weights_only=True)` (onto the CPU by default): never runs pickled
    code.

    A file that cannot be read is a one-line ValueError "{what} {path} cannot be read:
    {why}; {fix}" (why: cut short, not a PyTorch file, holds code objects, …); a missing
    path a FileNotFoundError and a folder an IsADirectoryError, both naming `fix`.
    """
    import torch  # here, so that importing _io stays cheap

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist; {fix}")
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder, not a file; {fix}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4" on foreign files
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise
    except Exception as e:  # torch raises many types for damaged or foreign files
        raise ValueError(f"{what} {path} cannot be read: {unreadable_reason(e)}; {fix}") from None


def unreadable_reason(e: BaseException) -> str:
    """Why torch.load(weights_only=True) failed, in a few words, from its exception."""
    text = str(e)
    code = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if code:
        return (
            f"it holds Python objects ({code.group(1)}) besides tensors, and loading those "
            "could run code, so iddpm refuses"
        )
    if "Unsupported operand" in text or "WeightsUnpickler" in text or "pickle" in text.lower():
        return "it is not a PyTorch file of tensors"
    damaged = "central directory" in text or "PytorchStreamReader" in text
    if isinstance(e, (EOFError, OSError)) or damaged:  # torch says EINVAL for some cuts
        return "it is empty, cut short or damaged"
    first = " ".join(text.split())[:80]
    return f"it is not a PyTorch file ({type(e).__name__}{': ' + first if first else ''})"
