"""Resumable, sharded jobs: a job folder with a manifest and one file per shard of work.

A long job (50,000 samples, the bound of a whole test set, the feature pass of FID) cuts
its global indices 0..N−1 into shards of `shard_size` and writes each finished shard as its
own file, so a job that is killed, pre-empted or stopped keeps every finished shard and a
rerun does only the rest. The layout:

    JOB/manifest.json          {"format": "iddpm-job", "format_version": 1, "kind": ...,
                                "total": N, "shard_size": S, "fields": {...}}
    JOB/shard-00003.npz        the arrays of indices 3S..4S−1, plus "_sha256"

- The manifest records everything the result depends on (`fields`: checkpoint SHA-256,
  sampler and options, step spec, seed, precision, code version, ...). A rerun whose
  request differs is refused with the first field that differs, never mixed.
- A shard is written atomically (temporary file, fsync, rename), and carries the SHA-256 of
  its arrays; one that does not load or whose digest disagrees (truncated, damaged, a
  foreign file under a shard's name) is treated as missing and done again, never trusted.
- Shard k covers indices [kS, min((k+1)S, N)). Results that are sums are summed in shard
  order, so the final numbers are bitwise the same whether the job ran in one go, was
  resumed, or was shared out over another number of ranks (shard k goes to rank k mod W).

Nothing outside the job folder is written here: the caller writes its final result (once
every shard is complete) with `_io.atomic_write`, so it appears complete or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from iddpm._io import atomic_write, dumps, remove_stale_temporaries, write_text

FORMAT = "iddpm-job"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DIGEST_KEY = "_sha256"


def digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the sorted keys, dtypes, shapes and bytes of `arrays`."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _normal(value: Any) -> Any:
    """The JSON form of a manifest value (tuples → lists, paths → str, floats stay)."""
    return json.loads(dumps(value))


class ShardedJob:
    """One job folder (module docstring). `fields`: what the result depends on."""

    def __init__(
        self, folder: Path, kind: str, fields: Mapping[str, Any], total: int, shard_size: int
    ) -> None:
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"--shard-size must be an integer >= 1, got {shard_size!r}")
        if total < 1:
            raise ValueError(f"a job needs at least one item, got {total}")
        self.folder, self.kind, self.total, self.shard_size = Path(folder), kind, total, shard_size
        self.fields = _normal(dict(fields))

    # ---- the manifest ----------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "total": self.total,
            "shard_size": self.shard_size,
            "fields": self.fields,
        }

    def check(self) -> bool:
        """Whether the folder holds this job already (True), or none yet (False); a folder
        holding another job or something else is refused with what differs."""
        path = self.folder / MANIFEST
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"job folder {self.folder} is a file; choose a folder")
        if not path.exists():
            if self.folder.exists() and any(self.folder.iterdir()):
                raise FileExistsError(
                    f"{self.folder} is not empty and holds no {MANIFEST}; choose another "
                    "job folder (--job-dir)"
                )
            return False
        try:
            old = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(
                f"{path} is unreadable ({type(e).__name__}); delete the job folder to start over"
            ) from None
        new = self.manifest()
        if not isinstance(old, dict) or old.get("format") != FORMAT:
            raise ValueError(f"{path} is not an iddpm job manifest; choose another job folder")
        for key in ("format_version", "kind", "total", "shard_size"):
            if old.get(key) != new[key]:
                raise ValueError(self._differs(key, old.get(key), new[key]))
        old_fields = old.get("fields") or {}
        for key in sorted(set(old_fields) | set(new["fields"])):
            if old_fields.get(key) != new["fields"].get(key):
                raise ValueError(self._differs(key, old_fields.get(key), new["fields"].get(key)))
        return True

    def _differs(self, key: str, old: Any, new: Any) -> str:
        return (
            f"job folder {self.folder} was started with {key} = {old!r} but this request has "
            f"{new!r}; rerun with the same options to resume, or choose another --job-dir "
            "(or delete that folder) to start over"
        )

    def open(self, is_main: bool = True) -> bool:
        """Check the folder and (on the main rank) create it and its manifest; returns
        whether it held this job already. Removes temporaries of killed writers."""
        existed = self.check()
        if is_main:
            self.created = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.folder)
            if not existed:
                write_text(self.folder / MANIFEST, dumps(self.manifest(), indent=1) + "\n")
        return existed

    def discard_if_unused(self) -> None:
        """After a failure (not an interruption): remove the folder when this process
        created it and no shard was finished, so a rejected request leaves nothing."""
        if getattr(self, "created", False) and not any(
            self.done(k) for k in range(self.num_shards)
        ):
            self.remove()

    # ---- shards --------------------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        return -(-self.total // self.shard_size)

    def range(self, k: int) -> range:
        return range(k * self.shard_size, min((k + 1) * self.shard_size, self.total))

    def path(self, k: int) -> Path:
        return self.folder / f"shard-{k:05d}.npz"

    def read(self, k: int) -> dict[str, np.ndarray] | None:
        """Shard k's arrays, or None when it is missing, unreadable or fails its digest."""
        try:
            with np.load(self.path(k), allow_pickle=False) as f:
                arrays = {key: f[key] for key in f.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            return None
        stored = arrays.pop(DIGEST_KEY, None)
        if stored is None or str(stored) != digest(arrays):
            return None
        return arrays

    def done(self, k: int) -> bool:
        return self.read(k) is not None

    def pending(self) -> list[int]:
        """Shards still to do (missing or damaged), in order."""
        return [k for k in range(self.num_shards) if not self.done(k)]

    def mine(self, rank: int, world_size: int) -> list[int]:
        """The pending shards of this rank (shard k goes to rank k mod world_size)."""
        return [k for k in self.pending() if k % world_size == rank]

    def write(self, k: int, arrays: Mapping[str, np.ndarray]) -> Path:
        """Store shard k atomically, with its digest."""
        arrays = {key: np.asarray(v) for key, v in arrays.items()}
        buf = io.BytesIO()
        np.savez(buf, **arrays, **{DIGEST_KEY: np.array(digest(arrays))})
        return atomic_write(self.path(k), lambda f: f.write(buf.getvalue()))

    def complete(self) -> bool:
        return not self.pending()

    def shards(self) -> list[dict[str, np.ndarray]]:
        """Every shard's arrays in order; a one-line ValueError when one is missing."""
        out = []
        for k in range(self.num_shards):
            arrays = self.read(k)
            if arrays is None:
                raise ValueError(
                    f"job folder {self.folder}: shard {k} is missing or damaged; rerun the "
                    "command to finish the job"
                )
            out.append(arrays)
        return out

    def remove(self) -> None:
        """Delete the job folder's own files (shards, manifest) and the folder if empty."""
        for k in range(self.num_shards):
            self.path(k).unlink(missing_ok=True)
        (self.folder / MANIFEST).unlink(missing_ok=True)
        remove_stale_temporaries(self.folder)
        with contextlib.suppress(OSError):  # something else lives there too
            os.rmdir(self.folder)
