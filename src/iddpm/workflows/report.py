"""The demo's one-page report: Markdown with the figures beside it and the commands that
reproduce each one. Pure formatting: the numbers and paths come in, a file goes out."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from iddpm._io import write_text


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def markdown_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(
    path: str | Path,
    title: str,
    intro: str,
    numbers: Sequence[tuple[str, Any, str]],
    figures: Sequence[tuple[str, Path, str]],
    commands: Mapping[str, str],
) -> Path:
    """Write a Markdown page.

    numbers: (what, value, note) rows of the results table; figures: (caption, PNG path,
    explanation), linked relative to the report; commands: figure/number -> shell command
    that reproduces it.
    """
    path = Path(path)
    parts = [f"# {title}", "", intro, "", "## Results", ""]
    parts.append(markdown_table([(w, v, n) for w, v, n in numbers], ["", "value", "note"]))
    for caption, png, text in figures:
        rel = Path(png).resolve().relative_to(path.parent.resolve())
        parts += ["", f"## {caption}", "", text, "", f"![{caption}]({rel.as_posix()})"]
    parts += ["", "## Reproduce", ""]
    for what, cmd in commands.items():
        parts += [f"{what}:", "", f"    {cmd}", ""]
    return write_text(path, "\n".join(parts).rstrip() + "\n")
