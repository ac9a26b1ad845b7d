"""Import layering (docs/design.md §2): every `iddpm` import must be an allowed edge."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "iddpm"

# module -> iddpm modules it may import (prefix match: "diffusion" allows diffusion.*).
DIFFUSION_ORDER = ["schedules", "gaussian", "likelihood", "likelihood_mc", "losses"]
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "_io": set(),
    "shards": {"_io"},
    "presets": {"config"},
    "_tensor": set(),
    "diffusion.schedules": {"_tensor"},
    "diffusion.gaussian": {"_tensor", "diffusion.schedules"},
    "diffusion.likelihood": {"_tensor", "diffusion.schedules", "diffusion.gaussian"},
    "diffusion.likelihood_mc": {
        "_tensor",
        "diffusion.schedules",
        "diffusion.gaussian",
        "diffusion.likelihood",
    },
    "diffusion.losses": {
        "_tensor",
        "diffusion.schedules",
        "diffusion.gaussian",
        "diffusion.likelihood",
    },
    "diffusion.timestep_sampler": {"_tensor"},
    "diffusion.respace": {"_tensor", "diffusion.schedules", "diffusion.gaussian"},
    "diffusion.samplers": {"_tensor", "diffusion.gaussian", "diffusion.respace"},
    "diffusion.dpm_solver": {"_tensor", "diffusion.gaussian", "diffusion.samplers"},
    "diffusion.analytic": {
        "_tensor",
        "diffusion.gaussian",
        "diffusion.likelihood",
        "diffusion.samplers",
    },
    "diffusion.step_schedule": {
        "_tensor",
        "diffusion.analytic",
        "diffusion.gaussian",
        "diffusion.likelihood",
        "diffusion.samplers",
    },
    "diffusion.unipc": {
        "_tensor",
        "diffusion.gaussian",
        "diffusion.samplers",
        "diffusion.dpm_solver",
    },
    "diffusion.sigma_solvers": {"_tensor", "diffusion.gaussian", "diffusion.samplers"},
    "diffusion.step_costs": {
        "_tensor",
        "diffusion.gaussian",
        "diffusion.respace",
        "diffusion.samplers",
        "diffusion.sigma_solvers",
        "diffusion.unipc",
    },
    "diffusion.registry": {
        "_tensor",
        "diffusion.analytic",
        "diffusion.gaussian",
        "diffusion.respace",
        "diffusion.samplers",
        "diffusion.dpm_solver",
        "diffusion.unipc",
        "diffusion.sigma_solvers",
    },
    "diffusion.guidance": {"_tensor", "diffusion.gaussian"},
    "model.layers": set(),
    "model.unet": {"model.layers", "config"},
    "model.classifier": {"model.layers", "model.unet", "config"},
    "model.convert": {"model.layers", "model.unet", "config", "_io"},
    "data.npz": set(),
    "data.images": {"config", "data.loader", "data.npz"},
    "data.bundled": {"data.images", "config"},
    "data.loader": set(),
    "data.cifar": {"data.images", "config"},
    "data.spec": {"data.images", "data.bundled", "data.cifar", "data.mapped", "config"},
    "data.mapped": {"data.images"},
    "data.prepared": {"data.images", "data.mapped", "data.npz", "data.spec"},
    "distributed": set(),
    "checkpoint": {"config"},
    "build": {"config", "diffusion", "model", "checkpoint"},
    "train.ema": set(),
    "train.metrics": set(),
    "train.rules": set(),
    "train.precision": set(),
    "train.interrupt": {"distributed"},
    "train.evaluate": {
        "diffusion.likelihood_mc",
        "diffusion.respace",
        "diffusion.samplers",
        "distributed",
    },
    "train.tensorboard": set(),
    "train.trainer": {
        "diffusion.gaussian",
        "diffusion.respace",
        "diffusion.losses",
        "diffusion.timestep_sampler",
        "train.ema",
        "train.metrics",
        "train.rules",
        "train.precision",
        "train.interrupt",
        "distributed",
        "checkpoint",
        "config",
        "_tensor",
    },
    "generate": {
        "diffusion.gaussian",
        "diffusion.registry",
        "diffusion.samplers",
        "diffusion.respace",
        "build",
        "checkpoint",
        "distributed",
        "config",
    },
    "eval.nll": {
        "diffusion.likelihood",
        "diffusion.likelihood_mc",
        "diffusion.respace",
        "diffusion.samplers",
        "build",
        "checkpoint",
        "distributed",
        "config",
    },
    "eval.classify": {"build", "config", "eval.nll"},
    "eval.fid": {"distributed", "generate"},
    "eval.features": {"distributed"},
    "eval.precision_recall": set(),
    "eval.bootstrap": set(),
    "eval.moments": {"eval.fid"},
    "eval.inception_score": set(),
    "eval.kid": set(),
    "eval.scorer": {
        "eval.bootstrap",
        "eval.fid",
        "eval.inception_score",
        "eval.kid",
        "eval.moments",
        "eval.precision_recall",
        "distributed",
    },
    # layer 4: whole jobs may use every layer below (never the command line)
    "workflows": {"*"},
    # layer 5: the command line maps argv to configs and calls one workflow
    "cli": {"cli", "workflows", "config", "presets"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    base = SRC.joinpath(*dotted.split(".")) if dotted else SRC
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _iddpm_imports(path: Path) -> set[str]:
    """iddpm modules imported by `path`, as dotted names relative to the package.

    `from iddpm.diffusion import samplers` counts as `diffusion.samplers`; names that are
    not modules (`from iddpm import __version__`) count as nothing.
    """
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    is_pkg = path.name == "__init__.py"
    pkg_parts = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name[len("iddpm.") :] for a in node.names if a.name.startswith("iddpm."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module == "iddpm" or (node.module or "").startswith("iddpm."):
                mod = node.module[len("iddpm") :].lstrip(".")
            else:
                continue
            subs = [f"{mod}.{a.name}".strip(".") for a in node.names]
            subs = [m for m in subs if _is_module(m)]
            found.update(subs or ([mod] if mod else []))
    return found


def _rules_key(name: str) -> str:
    # The command line and the workflows have one rule per package.
    for package in ("cli", "workflows"):
        if name == package or name.startswith(package + "."):
            return package
    return name


def _allowed(importer: str, imported: str) -> bool:
    rules = ALLOWED[_rules_key(importer)]
    if imported in ("_tensor", "_io") and _rules_key(importer) != "cli":
        return True  # layer-0 tensor and file helpers serve every layer below the CLI
    if "*" in rules and (_rules_key(imported) != "cli" or _rules_key(importer) == "cli"):
        return True
    if imported.startswith(importer.split(".")[0] + ".") and importer.startswith("diffusion."):
        return imported in rules
    return any(imported == r or imported.startswith(r + ".") for r in rules)


SOURCES = sorted(p for p in SRC.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: _module_name(p))
def test_module_imports_follow_the_layering(path: Path) -> None:
    name = _module_name(path)
    assert _rules_key(name) in ALLOWED, (
        f"{name} is not in the layering table; add it with its allowed edges"
    )
    bad = sorted(m for m in _iddpm_imports(path) if not _allowed(name, m))
    assert not bad, f"{name} imports {bad}, which docs/design.md's layering forbids"


def test_package_init_files_import_nothing_that_breaks_layering() -> None:
    # Sub-package __init__ files stay thin so importing one layer never drags in another.
    for init in SRC.rglob("__init__.py"):
        if init.parent == SRC:
            continue
        imports = _iddpm_imports(init)
        pkg = _module_name(init)
        assert all(m.startswith(pkg) for m in imports), f"{init} imports outside its package"


def test_nothing_imports_cli() -> None:
    for path in SOURCES:
        if _rules_key(_module_name(path)) == "cli":
            continue
        imports = _iddpm_imports(path)
        assert not any(_rules_key(m) == "cli" for m in imports), f"{path} imports cli"


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("diffusion.gaussian", "model.unet"),
        ("model.unet", "diffusion.gaussian"),
        ("diffusion.gaussian", "diffusion.likelihood"),  # strictly downward inside diffusion
        ("diffusion.timestep_sampler", "distributed"),
        ("train.trainer", "data.loader"),
        ("generate", "data.spec"),
        ("eval.nll", "train.trainer"),
        ("checkpoint", "build"),
        ("build", "cli"),
        ("cli.sample", "diffusion.samplers"),  # commands call workflows, nothing deeper
        ("cli.train", "train.trainer"),
        ("cli.evaluate", "_io"),
        ("workflows.sample", "cli"),
        ("train.trainer", "workflows.train"),
        ("generate", "workflows.plots"),
    ],
)
def test_the_rule_table_rejects_upward_edges(importer: str, imported: str) -> None:
    assert not _allowed(importer, imported)


def _sampler_name_tests(text: str, name: str) -> list[str]:
    """Comparisons of a value with the literal sampler `name`: `== "name"`, `"name" !=`,
    `in ("name", ...)`, `case "name"`."""
    q = re.escape(name)
    patterns = [
        rf"[=!]=\s*(['\"]){q}\1",
        rf"(['\"]){q}\1\s*[=!]=",
        rf"\bin\s*[\(\[\{{][^\)\]\}}]*(['\"]){q}\1",
        rf"\bcase\s+(['\"]){q}\1",
    ]
    return [m.group(0) for p in patterns for m in re.finditer(p, text)]


def test_no_module_outside_the_registry_branches_on_a_sampler_name() -> None:
    """What the package knows about a sampler is said at its registration (label, bound,
    statistics, ODE, calls); code elsewhere asks the entry instead of testing the name."""
    from iddpm.diffusion import registry

    assert _sampler_name_tests('if s["sampler"] == "ancestral":', "ancestral")  # it can fail
    assert _sampler_name_tests("x in ('ddim', 'dpmpp2m')", "dpmpp2m")
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "diffusion" / "registry.py":
            continue
        text = path.read_text()
        found += [
            f"{path.relative_to(SRC)}: {hit}"
            for n in registry.names()
            for hit in _sampler_name_tests(text, n)
        ]
    assert not found, f"branches on a sampler name outside the registry: {found}"
