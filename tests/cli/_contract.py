"""The error contract of the command line (docs/design.md §4) as test helpers.

A failing command: the documented exit code, ONE line on stderr that says what to do (a
usage error may keep click's "Usage / Try / Error" lines), no traceback, and every file
that existed before unchanged (compared by SHA-256 over the whole folder).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import traceback
from pathlib import Path

from click.testing import CliRunner, Result

# A message says what to do next: a flag, a path-ish word or an imperative.
DO_WORDS = re.compile(
    r"--[a-z]|\b(use|pass|choose|give|drop|delete|remove|free|raise|run|train|install|"
    r"repair|check|set|lower|add|rename|store|resume|replace|restore|convert|start|"
    r"retry|keep|transpose|put|make|write|download|extract|give|fix)\b",
    re.IGNORECASE,
)
TINY_TRAIN = [
    *("--steps", "2", "--batch-size", "4", "--model-channels", "32", "--channel-mult", "1,2"),
    *("--num-res-blocks", "1", "--attention-resolutions", "4", "--num-heads", "2"),
    *("--diffusion-steps", "20", "--checkpoint-every", "1", "--log-every", "1"),
    *("--ema-rates", "0.99", "--no-random-flip"),
]


def tree_state(root: str | os.PathLike[str]) -> dict[str, str]:
    """{relative path: sha256 of a file, or "dir"} for everything under `root`."""
    root = Path(root)
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            state[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in filenames:
            path = Path(dirpath, name)
            state[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def invoke(args: list[str]) -> Result:
    """The CLI in this process, as `iddpm ARGS` would run it (exceptions are captured)."""
    from iddpm.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="iddpm")


def error_lines(result: Result) -> list[str]:
    """The non-empty stderr lines as a terminal shows them: a progress bar redraws its
    line after a carriage return and a closed bar blanks it, so only the text after a
    line's last "\\r" stays visible."""
    visible = (line.rsplit("\r", 1)[-1] for line in result.stderr.split("\n"))
    return [line.strip() for line in visible if line.strip()]


def check_failure(result: Result, code: int, hint: str | None) -> str:
    """Assert the one-line contract of a failed command; returns its message line."""
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        raise AssertionError(f"traceback instead of one line:\n{tb}")
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out
    assert result.exit_code == code, (result.exit_code, out)
    lines = error_lines(result)
    if lines and lines[0].startswith("Usage:"):  # click's usage error: Usage / Try / Error
        assert len(lines) == 3 and lines[2].startswith("Error: "), lines
        line = lines[2]
    else:
        assert len(lines) == 1, lines
        line = lines[0]
        assert line.startswith("iddpm: "), line
    if hint is not None:
        assert hint in line, f"{hint!r} not in {line!r}"
    if code == 2:
        assert DO_WORDS.search(line), f"says nothing about what to do: {line!r}"
    return line


def check_unchanged(before: dict[str, str], after: dict[str, str]) -> None:
    """No file that existed before changed or vanished, and nothing new appeared."""
    changed = sorted(k for k in before if after.get(k) != before[k])
    added = sorted(set(after) - set(before))
    assert not changed and not added, {"changed": changed, "added": added}


def python() -> str:
    return sys.executable
