"""The run cache, written once: what jobs compute for a checkpoint and reuse, kept in
RUN/cache/<what>/<checkpoint>-<key>.{json,pt}.

The key is a digest of `meta`, everything the values depend on (the checkpoint's SHA-256,
the step spacing, the images, the seed, …); the file stores `meta` beside the values. A
file is validated when it is read: one that cannot be read, that stores other `meta`, or
whose values fail the caller's check is damaged, and is ignored and recomputed (then
replaced). Writes are atomic, on rank 0, and best effort: a run this process cannot write
to (read-only, full) is used without a cache, and nothing is created in the run before a
value has been computed. Tensor files are read with `weights_only=True` (never pickled
code).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from iddpm._io import atomic_write, write_json
from iddpm.workflows import runtime
from iddpm.workflows.runs import run_of

T = TypeVar("T")


class Damaged(ValueError):
    """Raised by a cache entry's check: the stored values are not what they must be."""


def checkpoint_digest(path: Path) -> str:
    """SHA-256 of a checkpoint file (hex): what cached values belong to. Hashed once per
    process for a file of unchanged inode, size and mtime (a sweep asks for it at every row,
    and a large model's checkpoint takes seconds to read; checkpoints are replaced by
    rename, so a new one is a new inode)."""
    st = Path(path).stat()
    return _file_digest(str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, inode: int, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class RunCache:
    """The cache of one checkpoint: RUN/cache (or `root`), its files named after the
    checkpoint. `enabled=False` computes everything and stores nothing."""

    def __init__(self, checkpoint: Path, root: Path | None = None, enabled: bool = True) -> None:
        self.checkpoint = Path(checkpoint)
        self.root = Path(root) if root is not None else run_of(self.checkpoint).cache("")
        self.enabled = enabled

    def path(self, what: str, meta: dict[str, Any], suffix: str = ".json") -> Path:
        """RUN/cache/<what>/<checkpoint>-<key><suffix>, the key a digest of `meta`."""
        key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
        return self.root / what / f"{self.checkpoint.stem}-{key}{suffix}"

    def json(
        self,
        what: str,
        meta: dict[str, Any],
        compute: Callable[[], Any],
        check: Callable[[Any], T],
    ) -> T:
        """check(values) of the entry (what, meta): read back when the stored file is sound,
        else computed with compute() (JSON-safe values) and stored. `check` turns stored
        values into what the caller uses, raising Damaged (or ValueError/TypeError) for
        values that are not."""
        path = self.path(what, meta)
        stored = self._read(path, lambda p: json.loads(p.read_text()), meta, check)
        if stored is not None:
            return stored[0]
        values = compute()
        result = check(values)
        self._write(path, lambda: write_json(path, {"meta": meta, "values": values}))
        return result

    def tensors(
        self,
        what: str,
        meta: dict[str, Any],
        compute: Callable[[], dict[str, torch.Tensor | int | float]],
        check: Callable[[dict[str, Any]], T],
    ) -> T:
        """As `json`, for a dict of tensors (and numbers), stored with torch.save."""
        path = self.path(what, meta, ".pt")

        def load(p: Path) -> dict[str, Any]:
            state = torch.load(p, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not isinstance(state.get("meta"), str):
                raise Damaged("not a cache entry")
            return {"meta": json.loads(state["meta"]), "values": state.get("values")}

        stored = self._read(path, load, meta, check)
        if stored is not None:
            return stored[0]
        values = compute()
        result = check(values)
        state = {"meta": json.dumps(meta), "values": values}
        self._write(path, lambda: atomic_write(path, lambda f: torch.save(state, f)))
        return result

    def _read(
        self, path: Path, load: Callable[[Path], Any], meta: dict[str, Any], check: Callable
    ) -> tuple[Any] | None:
        if not self.enabled or not path.is_file():
            return None
        try:
            stored = load(path)
            if not isinstance(stored, dict) or stored.get("meta") != meta:
                return None  # damaged, or another entry's file: recomputed and replaced
            return (check(stored["values"]),)
        except Exception:  # any damage (truncated, wrong types, shapes): recompute
            return None

    def _write(self, path: Path, write: Callable[[], Any]) -> None:
        if not self.enabled or not runtime.is_main():
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write()
        except OSError:  # a read-only or full run is used without a cache
            pass
