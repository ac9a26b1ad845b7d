"""The README's leaderboard and bound tables, rendered from committed benchmark output.

    python benchmarks/bench_samplers.py --checkpoint RUN \
        --samplers ancestral,ddim,dpmpp2m,dpmpp3m,dpmpp2m-sde,analytic --nfe 5,10,20,50 \
        > docs/results/leaderboard_even.json
    python scripts/readme_tables.py            # rewrite the tables in README.md
    python scripts/readme_tables.py --check    # exit 1 if README.md differs (tests run this)

Each table stands between `<!-- table:NAME -->` and `<!-- /table:NAME -->` in README.md, so
a number in those tables is never typed by hand: it is the committed JSON's.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "leaderboard_even.json"
README = ROOT / "README.md"

LABELS = {
    "ancestral": "ancestral, learned Σ (the paper's)",
    "ddim": "ddim (η = 0)",
    "dpmpp2m": "dpmpp2m",
    "dpmpp3m": "dpmpp3m",
    "dpmpp2m-sde": "dpmpp2m-sde (η = 1)",
    "analytic": "analytic (Analytic-DPM Σ)",
}
BOUND_COLUMNS = (
    ("even_model", "even, learned Σ"),
    ("even_analytic", "even, Analytic-DPM Σ"),
    ("even_fixed-large", "even, fixed-large Σ"),
    ("even_fixed-small", "even, fixed-small Σ"),
    ("dp_model", "bound-optimal (`iddpm steps`), learned Σ"),
)


def _number(value: float) -> str:
    """Three significant figures below 100 (5.66, 30.2), one decimal above (196.9)."""
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def leaderboard_table(result: dict) -> str:
    """sampler × NFE: mean digits-FID over seeds (precision / recall); the best of each
    column in bold."""
    rows = result["leaderboard"]
    budgets = sorted({r["nfe"] for r in rows})
    best = {k: min(r["fid"] for r in rows if r["nfe"] == k) for k in budgets}
    cells: dict[str, dict[int, str]] = {}
    for r in rows:
        text = _number(r["fid"])
        text = f"**{text}**" if r["fid"] == best[r["nfe"]] else text
        cells.setdefault(r["sampler"], {})[r["nfe"]] = (
            f"{text} ({r['precision']:.2f} / {r['recall']:.2f})"
        )
    lines = [
        "| sampler | " + " | ".join(f"{k} NFE" for k in budgets) + " |",
        "|---" * (len(budgets) + 1) + "|",
    ]
    for name, row in cells.items():
        label = LABELS.get(name, name)
        lines.append(f"| {label} | " + " | ".join(row.get(k, "") for k in budgets) + " |")
    return "\n".join(lines)


def bound_table(result: dict) -> str:
    """K × reverse variance: the K-step bound on the test digits in bits/dim; the least of
    each row in bold."""
    bounds = result["bounds_bpd"]
    ks = sorted(int(k) for k in bounds["even_model"])
    lines = [
        "| K | " + " | ".join(title for _, title in BOUND_COLUMNS) + " |",
        "|---" * (len(BOUND_COLUMNS) + 1) + "|",
    ]
    for k in ks:
        values = [bounds[key][str(k)] for key, _ in BOUND_COLUMNS]
        least = min(values)
        cells = [f"**{_number(v)}**" if v == least else _number(v) for v in values]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TABLES = {"leaderboard": leaderboard_table, "bounds": bound_table}


def render(readme: str, result: dict) -> str:
    """README text with every marked table rendered from `result`."""
    for name, make in TABLES.items():
        pattern = re.compile(
            rf"(<!-- table:{name} -->\n).*?(\n<!-- /table:{name} -->)", flags=re.DOTALL
        )
        if not pattern.search(readme):
            raise ValueError(f"README.md has no <!-- table:{name} --> block")
        table = make(result)
        readme = pattern.sub(lambda m, table=table: m.group(1) + table + m.group(2), readme)
    return readme


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md differs")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    new = render(text, json.loads(RESULTS.read_text(encoding="utf-8")))
    if args.check:
        return int(new != text)
    if new != text:
        README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
