"""The report's figures: digits-FID against sampling steps, training curves, and copies of
the first seed's sample grids. Plotting only; titles and captions are the template's."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.ablate import library
from experiments.ablate.cache import UnitFiles, read_metrics
from experiments.ablate.plan import OBJECTIVES, Arm, Unit
from experiments.ablate.stats import ArmSummary

SCHEDULES = ("cosine", "linear")


@dataclass(frozen=True)
class Figure:
    """A plotted figure: `kind` ("fid_vs_steps", "curves_vlb" or "curves_all"), the
    schedule it shows, and its PNG."""

    kind: str
    schedule: str
    path: Path


@dataclass(frozen=True)
class SampleGrids:
    """One arm's sample grids copied for the report: at the smallest K, and the full chain."""

    objective: str
    var_type: str
    images: tuple[Path, Path]


def plot_all(
    out: Path, plan: Sequence[Unit], summary: dict[Arm, ArmSummary], window: int, folder: Path
) -> list[Figure]:
    """Every figure that has data, into `folder`: FID vs K per schedule, then per schedule
    the training curves of the first seed's L_vlb arms and of all its arms at the shortest T."""
    figures = []
    for schedule in SCHEDULES:
        path = plot_fid_vs_steps(folder / f"fid_vs_steps_{schedule}.png", summary, schedule)
        if path is not None:
            figures.append(Figure("fid_vs_steps", schedule, path))
    for schedule in SCHEDULES:
        units = _first_seed_shortest_chain(plan, schedule)
        vlb = [unit for unit in units if unit.objective.startswith("vlb")]
        for tag, shown in (("vlb", vlb), ("all", units)):
            path = plot_curves(folder / f"curves_{tag}_{schedule}.png", out, shown, window)
            if path is not None:
                figures.append(Figure(f"curves_{tag}", schedule, path))
    return figures


def _first_seed_shortest_chain(plan: Sequence[Unit], schedule: str) -> list[Unit]:
    """The plan's units of `schedule` with the plan's first seed, at their shortest T."""
    first = [u for u in plan if u.schedule == schedule and u.seed == plan[0].seed]
    shortest = min((u.timesteps for u in first), default=0)
    return [u for u in first if u.timesteps == shortest]


def _curve(out: Path, unit: Unit, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, values) of a positive per-step metric of the unit's run; None if absent."""
    path = UnitFiles.of(out, unit).metrics
    if not path.is_file():
        return None
    points = [(row["step"], row[key]) for row in read_metrics(path) if key in row and row[key] > 0]
    if not points:
        return None
    return np.asarray([p[0] for p in points]), np.asarray([p[1] for p in points])


def plot_curves(path: Path, out: Path, units: Sequence[Unit], window: int) -> Path | None:
    """Per-step training loss and grad norm (log scale, raw and `window`-step moving
    average) of `units`, one colour each. None when no unit has a metrics file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    figure = MplFigure(figsize=(11, 4), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(1, 2, i + 1) for i in range(2)]
    drawn = False
    for ax, key in zip(axes, ("loss", "grad_norm")):
        for i, unit in enumerate(units):
            curve = _curve(out, unit, key)
            if curve is None:
                continue
            steps, values = curve
            ax.plot(steps, values, lw=0.5, alpha=0.35, color=f"C{i}")
            width = max(1, min(window, len(values)))
            kernel = np.ones(width) / width
            average = np.exp(np.convolve(np.log(values), kernel, mode="valid"))
            x = steps[width // 2 : width // 2 + len(average)]
            ax.plot(x, average, lw=1.8, color=f"C{i}", label=unit.name)
            drawn = True
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.set(xlabel="training step", ylabel=f"{key} (per step)")
        ax.set_title(f"{key}: raw (faint) and {window}-step moving average")
    if not drawn:
        return None
    axes[0].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def fid_step_counts(summary: dict[Arm, ArmSummary]) -> list[int]:
    """Every K with a digits-FID in `summary`, ascending."""
    metrics = {m for arm_summary in summary.values() for m in arm_summary.stats}
    return sorted(int(m[len("fid_") :]) for m in metrics if m.startswith("fid_"))


def plot_fid_vs_steps(path: Path, summary: dict[Arm, ArmSummary], schedule: str) -> Path | None:
    """digits-FID (mean over seeds) against K for every arm of `schedule`; None if empty."""
    arms = {arm: s for arm, s in summary.items() if arm.schedule == schedule}
    steps = fid_step_counts(arms)
    if not arms or not steps:
        return None
    values = {arm.label: [s.mean(f"fid_{k}") for k in steps] for arm, s in arms.items()}
    title = f"digits-FID vs sampling steps, {schedule} schedule (largest K = full chain)"
    ylabel = "digits-FID (lower is better, log scale)"
    return library.plot_metric_vs_steps(path, steps, values, ylabel, title, log_y=True)


def copy_sample_grids(out: Path, plan: Sequence[Unit], folder: Path) -> list[SampleGrids]:
    """Copy the first cosine seed's sample grids at the smallest K and the full chain
    (largest K) into `folder`, for every arm at the shortest T that has both."""
    copied = []
    for unit in _first_seed_shortest_chain(plan, "cosine"):
        for var_type in OBJECTIVES[unit.objective].eval_var_types:
            grids = UnitFiles.of(out, unit).grids(var_type)
            found = sorted(grids.glob("samples_K*.png"), key=lambda p: int(p.stem.split("K")[1]))
            if len(found) < 2:
                continue
            images = []
            for png in (found[0], found[-1]):
                steps = png.stem.split("_")[1]
                images.append(folder / f"samples_{unit.name}_{var_type}_{steps}.png")
                shutil.copyfile(png, images[-1])
            copied.append(SampleGrids(unit.objective, var_type, (images[0], images[1])))
    return copied
