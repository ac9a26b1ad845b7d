"""The README's leaderboard and bound tables are the committed benchmark JSON's, rendered by
scripts/readme_tables.py: no number in them is typed by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "readme_tables", ROOT / "scripts" / "readme_tables.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_are_rendered_from_the_committed_results() -> None:
    tables = _script()
    readme = tables.README.read_text(encoding="utf-8")
    result = json.loads(tables.RESULTS.read_text(encoding="utf-8"))
    assert tables.render(readme, result) == readme, "run: python scripts/readme_tables.py"


def test_rendering_marks_the_best_of_each_column_and_row() -> None:
    tables = _script()
    row = {"precision": 0.5, "recall": 0.25}
    result = {
        "leaderboard": [
            {"sampler": "ddim", "nfe": 5, "fid": 12.34, **row},
            {"sampler": "ddim", "nfe": 10, "fid": 4.0, **row},
            {"sampler": "dpmpp2m", "nfe": 5, "fid": 7.5, **row},
            {"sampler": "dpmpp2m", "nfe": 10, "fid": 150.04, **row},
        ],
        "bounds_bpd": {
            key: {"10": value, "25": value - 1}
            for key, value in (
                ("even_model", 5.5),
                ("even_analytic", 6.0),
                ("even_fixed-large", 6.5),
                ("even_fixed-small", 196.94),
                ("dp_model", 4.6),
            )
        },
    }
    board = tables.leaderboard_table(result).splitlines()
    assert board[0] == "| sampler | 5 NFE | 10 NFE |"
    assert board[2] == "| ddim (η = 0) | 12.3 (0.50 / 0.25) | **4.00** (0.50 / 0.25) |"
    assert board[3] == "| dpmpp2m | **7.50** (0.50 / 0.25) | 150.0 (0.50 / 0.25) |"
    bounds = tables.bound_table(result).splitlines()
    assert bounds[2] == "| 10 | 5.50 | 6.00 | 6.50 | 196.9 | **4.60** |"
    assert bounds[3] == "| 25 | 4.50 | 5.00 | 5.50 | 195.9 | **3.60** |"
    text = "a\n<!-- table:leaderboard -->\nold\n<!-- /table:leaderboard -->\n"
    text += "<!-- table:bounds -->\nold\n<!-- /table:bounds -->\nb"
    new = tables.render(text, result)
    assert "old" not in new and new.startswith("a\n") and new.endswith("\nb")
    assert tables.render(new, result) == new  # idempotent
