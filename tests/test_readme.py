"""The README: its Python quick start runs, and it gives exactly the two commands CI uses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_quick_start_runs_and_samples() -> None:
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    code = blocks[0]
    assert len([line for line in code.splitlines() if line.strip()]) <= 12
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    images = namespace["images"]
    assert images.shape == (16, 1, 8, 8) and torch.isfinite(images).all()
    assert namespace["loss"].item() > 0


def test_readme_gives_the_two_commands_and_ci_runs_the_test_one() -> None:
    text = README.read_text()
    assert "    make demo\n" in text and "    make test\n" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci
