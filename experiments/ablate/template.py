"""Named prose blocks of `report_template.md`, filled with string.Template placeholders."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

TEMPLATE = Path(__file__).with_name("report_template.md")
_MARKER = re.compile(r"^<!-- block: (\S+) -->$", re.MULTILINE)


@dataclass(frozen=True)
class Templates:
    """Block name -> text (without the blank lines around it)."""

    blocks: dict[str, str]

    @classmethod
    def load(cls, path: Path = TEMPLATE) -> Templates:
        """Parse `path`: each `<!-- block: NAME -->` line starts a block that runs to the
        next such line; text before the first one is a comment for the reader."""
        parts = _MARKER.split(path.read_text())
        names, bodies = parts[1::2], parts[2::2]
        if len(set(names)) != len(names):
            raise ValueError(f"{path} defines a block twice; give every block its own name")
        return cls({name: body.strip("\n") for name, body in zip(names, bodies)})

    def fill(self, name: str, **values: object) -> str:
        """Block `name` with its ${placeholders} replaced by `values` (all required)."""
        if name not in self.blocks:
            raise ValueError(f"the report template has no block {name!r}; add it to {TEMPLATE}")
        try:
            return Template(self.blocks[name]).substitute(values)
        except KeyError as missing:
            raise ValueError(
                f"block {name!r} of the report template needs a value for {missing}"
            ) from None
