"""The repository stands alone: every Markdown file that code or docs cite exists in it,
every cited section or item exists in that file, and nothing points outside the repository.

Citation forms checked: `docs/design.md §4`, `docs/paper.md P13` (also lists and ranges
such as `P9, P11` and `P4–P13`), `docs/paper.md, "The network"` (a section by name),
`docs/style.md 16` and `erratum E1`. Notes cited by their old names are not in the
repository: `python scripts/fix_citations.py` points them into docs/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import iddpm

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("src", "tests", "benchmarks", "experiments", "scripts", "docs")
TOP_FILES = ("README.md", "CHANGELOG.md", "CITATION.cff", "Makefile", "pyproject.toml")
SUFFIXES = {".py", ".md", ".toml", ".cff", ".txt", ".sh", ".cfg", ".yml", ".yaml", ".json"}
# Markdown names in code that are outputs or test data, not citations: the demo's report,
# the ablation's optional notes beside its report, a file a test writes.
NOT_CITATIONS = {"report.md", "observations.md", "readme.md"}

MD_MENTION = re.compile(r"(?<![\w./~$-])((?:[\w.-]+/)*[\w-]+\.md)\b")
DESIGN_REF = re.compile(r"docs/design\.md[\s(,]*((?:§\d+[\s,–-]*)+)")
PAPER_ITEMS = re.compile(r"docs/paper\.md[\s(,]*((?:P\d+(?:\s*[,/–-]\s*)?)+)")
PAPER_SECTION = re.compile(r"docs/paper\.md,\s+[\"*]?([A-Z][A-Za-z ]*[a-z])")
STYLE_ITEM = re.compile(r"docs/style\.md (\d+)\b")
ERRATUM = re.compile(r"\berratum (E\d+)\b")
OUTSIDE = re.compile(r"/work/|\bshared/(?:design|fixtures|seed|hooks)\b|\.\./seed/|_summary\.md")


def _sources() -> list[Path]:
    files = [REPO / name for name in TOP_FILES if (REPO / name).is_file()]
    for folder in FOLDERS:
        files += [
            p
            for p in (REPO / folder).rglob("*")
            if p.suffix in SUFFIXES and p.is_file() and "__pycache__" not in p.parts
        ]
    this = Path(__file__).resolve()
    return sorted(p for p in files if p.resolve() != this and p.name != "fix_citations.py")


SOURCES = {str(p.relative_to(REPO)): p.read_text(encoding="utf-8") for p in _sources()}


def _doc(name: str) -> str:
    return (REPO / "docs" / name).read_text(encoding="utf-8")


def _expand(items: str) -> list[int]:
    """'P6–P8, P15' -> [6, 7, 8, 15]."""
    out: list[int] = []
    for part in re.split(r"\s*[,/]\s*", items.strip(" ,/–-")):
        ends = [int(n) for n in re.findall(r"P(\d+)", part)]
        if len(ends) == 2:
            out += range(ends[0], ends[1] + 1)
        else:
            out += ends
    return out


def _citations(pattern: re.Pattern) -> list[tuple[str, str]]:
    return [(name, m.group(1)) for name, text in SOURCES.items() for m in pattern.finditer(text)]


def test_every_cited_markdown_file_is_in_the_repository() -> None:
    missing = []
    for name, cited in _citations(MD_MENTION):
        if Path(cited).name in NOT_CITATIONS:
            continue
        here = (REPO / name).parent
        if not any((base / cited).is_file() for base in (REPO, here, REPO / "docs")):
            missing.append(f"{name}: {cited}")
    assert not missing, f"cited but not in the repository (run scripts/fix_citations.py): {missing}"


def test_cited_design_sections_exist() -> None:
    headings = set(re.findall(r"^#+ §(\d+)\b", _doc("design.md"), re.MULTILINE))
    cited = [
        (name, n) for name, refs in _citations(DESIGN_REF) for n in re.findall(r"§(\d+)", refs)
    ]
    assert len(cited) >= 10, "the citation pattern no longer finds the code's citations"
    assert not [c for c in cited if c[1] not in headings], f"no such section: {cited}"


def test_cited_paper_items_and_sections_exist() -> None:
    paper = _doc("paper.md")
    items = {int(n) for n in re.findall(r"^- \*\*\(P(\d+)\)\*\*", paper, re.MULTILINE)}
    assert items == set(range(1, 16)), "docs/paper.md numbers its items P1 … P15"
    cited = [(name, n) for name, refs in _citations(PAPER_ITEMS) for n in _expand(refs)]
    assert len(cited) >= 20, "the citation pattern no longer finds the code's citations"
    assert not [c for c in cited if c[1] not in items], f"no such item: {cited}"

    headings = [h.lower() for h in re.findall(r"^#+ (.+)$", paper, re.MULTILINE)]
    sections = _citations(PAPER_SECTION)
    assert {s.lower() for _, s in sections} >= {"the network", "conventions"}
    unknown = [c for c in sections if not any(h.startswith(c[1].lower()) for h in headings)]
    assert not unknown, f"no such section in docs/paper.md: {unknown}"

    errata = set(re.findall(r"\*\*(E\d+)\*\*", paper))
    assert not [c for c in _citations(ERRATUM) if c[1] not in errata]


def test_cited_style_items_exist() -> None:
    items = set(re.findall(r"^(\d+)\. \*\*", _doc("style.md"), re.MULTILINE))
    assert items == {str(n) for n in range(1, 19)}, "docs/style.md numbers its rules 1 … 18"
    cited = _citations(STYLE_ITEM)
    assert cited and not [c for c in cited if c[1] not in items], cited


def test_nothing_refers_to_files_outside_the_repository() -> None:
    found = [
        f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
        for name, text in SOURCES.items()
        for m in OUTSIDE.finditer(text)
    ]
    assert not found, found


@pytest.mark.parametrize("pattern", [DESIGN_REF, PAPER_ITEMS, STYLE_ITEM, MD_MENTION])
def test_the_patterns_see_a_citation_of_each_form(pattern: re.Pattern) -> None:
    # guards the checks above against a pattern that silently matches nothing
    examples = "(docs/design.md §2, docs/style.md 16) (docs/paper.md P6–P8, P15)"
    assert pattern.search(examples)
    assert _expand("P6–P8, P15") == [6, 7, 8, 15] and _expand("P4/P5") == [4, 5]


def test_license_and_citation_match_the_package() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()  # (tomllib needs Python 3.11)
    assert re.search(r'^license = "MIT"$', pyproject, re.MULTILINE)
    assert re.search(rf'^version = "{re.escape(iddpm.__version__)}"$', pyproject, re.MULTILINE)
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    cff = (REPO / "CITATION.cff").read_text()
    assert f'version: "{iddpm.__version__}"' in cff
    assert "2102.09672" in cff and "Nichol" in cff and "Dhariwal" in cff
