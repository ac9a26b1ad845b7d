"""`import iddpm` exposes the public API (docs/design.md §3) without loading torch up front."""

from __future__ import annotations

import subprocess
import sys

import pytest

import iddpm


@pytest.mark.parametrize("name", iddpm.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(iddpm, name) is not None


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        iddpm.nope  # noqa: B018


def test_import_is_light() -> None:
    code = "import sys, iddpm; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
