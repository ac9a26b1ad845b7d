"""Point every citation of the project's notes at their copies in docs/.

    python scripts/fix_citations.py [--check] [--root DIR]

The design notes, the paper notes and the style guide were once kept outside the
repository as DESIGN.md, PAPER.md and STYLE.md, and code cites them that way
(`DESIGN.md §4`, `PAPER.md P13`, `shared/design/PAPER.md`). They now live in the
repository as docs/design.md, docs/paper.md and docs/style.md, with the same section and
item numbers, so a citation is rewritten by its file name only:

    DESIGN.md §4  ->  docs/design.md §4        PAPER.md P13  ->  docs/paper.md P13

Every text file git knows (tracked, or untracked and not ignored) is rewritten in place.
Idempotent: a second run changes nothing, so it can be rerun after merging branches that
still cite the old names. `--check` changes nothing and exits 1 when something would
change. Prints one JSON object: {"changed": [paths], "rewrites": count, "check": bool}.
tests/test_citations.py checks that every citation then resolves.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

NOTES = {"DESIGN": "docs/design.md", "PAPER": "docs/paper.md", "STYLE": "docs/style.md"}
# The bare name, or any path ending in shared/design/NAME.md; not part of a longer name.
CITATION = re.compile(r"(?<![\w./-])(?:[\w./-]*?shared/design/)?(DESIGN|PAPER|STYLE)\.md")
# This script and the test describe the old names on purpose.
SKIP = {"scripts/fix_citations.py", "tests/test_citations.py"}


def rewrite(text: str) -> tuple[str, int]:
    """`text` with every old citation pointed into docs/, and the number of rewrites."""
    return CITATION.subn(lambda m: NOTES[m.group(1)], text)


def text_files(root: Path) -> list[Path]:
    """The files git knows under `root` (tracked, or untracked and not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({root / p for p in listed.split("\0") if p and p not in SKIP})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if needed")
    args = parser.parse_args(argv)
    changed, total = [], 0
    for path in text_files(args.root):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            text = path.read_bytes().decode("utf-8")  # bytes: line endings stay as they are
        except (UnicodeDecodeError, OSError):
            continue  # binary (images, weights, archives)
        new, count = rewrite(text)
        if count:
            changed.append(str(path.relative_to(args.root)))
            total += count
            if not args.check:
                path.write_bytes(new.encode("utf-8"))
    print(json.dumps({"changed": changed, "rewrites": total, "check": args.check}))
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
