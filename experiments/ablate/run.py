"""Train and evaluate the units of a plan, in worker processes, caching each piece.

Each unit is trained once; each of its objective's σ² choices is then evaluated on exact
test bits/dim (P10, P12) and digits-FID at every K of `sample_step_counts` (P14). Finished
pieces are cached (see `cache`), so a rerun skips finished work and a crash loses at most
the unit in progress.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from experiments.ablate import library
from experiments.ablate.cache import (
    Invocation,
    UnitFiles,
    log_invocation,
    read_json,
    reference_stats_path,
    write_json,
)
from experiments.ablate.plan import OBJECTIVES, Settings, Unit, sample_step_counts
from experiments.ablate.stats import curve_stats


def evaluate_variant(
    loaded: library.LoadedModel,
    settings: Settings,
    reference: library.FeatureStats,
    grid_dir: Path | None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Exact test bits/dim and digits-FID against `reference` at every K of
    `sample_step_counts` (with the seconds each took); sample grids go to `grid_dir`."""
    start = time.perf_counter()
    images = library.test_images(settings.nll_images)
    nll = library.bits_per_dim(
        loaded,
        images,
        settings.nll_batch,
        settings.timestep_batch,
        settings.eval_seed,
        device,
    )
    result: dict[str, Any] = {
        **nll,
        "nll_seconds": time.perf_counter() - start,
        "fid": {},
        "fid_seconds": {},
    }
    score = library.digits_fid_scorer(reference, device)
    timesteps = loaded.config.diffusion.num_timesteps
    for steps in sample_step_counts(timesteps, settings):
        start = time.perf_counter()
        samples = library.sample(loaded, settings.fid_samples, steps, settings.eval_seed, device)
        result["fid"][str(steps)] = score(samples)
        result["fid_seconds"][str(steps)] = time.perf_counter() - start
        if grid_dir is not None:
            grid = samples[: settings.grid_images]
            library.save_image_grid(grid_dir / f"samples_K{steps}.png", grid)
    return result


def run_unit(
    unit: Unit,
    settings: Settings,
    out: Path,
    device: str = "cpu",
    deadline: float | None = None,
) -> dict[str, Any]:
    """Train (or resume) and evaluate one unit; returns OUT/units/NAME/result.json's content.

    Finished pieces (training, each evaluated variance) are read back instead of redone.
    Past `deadline` (time.time() seconds) nothing new starts: the result says "skipped".
    """
    files = UnitFiles.of(out, unit)
    if files.result.is_file():
        return _cached_result(files.result, settings)
    if deadline is not None and time.time() > deadline:
        return {"unit": asdict(unit), "name": unit.name, "skipped": "time budget exhausted"}
    result: dict[str, Any] = {
        "unit": asdict(unit),
        "name": unit.name,
        "settings": asdict(settings),
        "train": _train(unit, settings, files, device),
        "curve": curve_stats(files.metrics, settings.curve_window),
        "variants": {},
    }
    reference = library.reference_stats(reference_stats_path(out))
    trained = library.load_trained(files.run, device)
    for var_type in OBJECTIVES[unit.objective].eval_var_types:
        path = files.evaluation(var_type)
        if not path.is_file():
            loaded = library.with_var_type(trained, var_type)
            grids = files.grids(var_type)
            write_json(path, evaluate_variant(loaded, settings, reference, grids, device))
        result["variants"][var_type] = read_json(path)
    write_json(files.result, result)
    return result


def _cached_result(path: Path, settings: Settings) -> dict[str, Any]:
    """A finished unit's result, refused when it was measured with other settings."""
    cached = read_json(path)
    if cached["settings"] != json.loads(json.dumps(asdict(settings))):
        raise ValueError(
            f"{path} was measured with other settings ({cached['settings']}); "
            "use another --out or delete that folder"
        )
    return cached


def _train(unit: Unit, settings: Settings, files: UnitFiles, device: str) -> dict[str, Any]:
    """The unit's training summary: read back, or trained (resumed) and written now."""
    if not files.train_summary.is_file():
        config = library.unit_config(unit, settings.train_steps)
        summary = library.train_unit(config, files.run, device)
        if summary["step"] < config.train.steps:  # stopped by a signal: resume next time
            raise RuntimeError(
                f"{unit.name}: training stopped at step {summary['step']} of "
                f"{config.train.steps}; rerun the same command to resume it"
            )
        write_json(files.train_summary, summary)
    return read_json(files.train_summary)


@dataclass
class Outcome:
    """What `run_plan` did: unit name -> result dict, and the wall-clock of the whole plan."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    wall_s: float = 0.0


def run_plan(
    plan: Sequence[Unit],
    settings: Settings,
    out: Path,
    jobs: int = 1,
    threads: int = 1,
    niceness: int = 0,
    max_minutes: float | None = None,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> Outcome:
    """Run every unit (`jobs` worker processes of `threads` threads each, in plan order;
    jobs=1 runs in this process). No unit starts after `max_minutes`. Appends a line to
    OUT/invocations.jsonl naming the units this call computed."""
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    library.reference_stats(reference_stats_path(out))  # once, before workers could race
    deadline = start + 60 * max_minutes if max_minutes else None
    cached = {unit.name for unit in plan if UnitFiles.of(out, unit).result.is_file()}
    outcome = Outcome()

    def finished(unit: Unit, result: dict[str, Any]) -> None:
        outcome.results[unit.name] = result
        if log is not None:
            log(f"[{time.time() - start:7.0f} s] {unit.name}: {result.get('skipped') or 'done'}")

    arguments = (settings, out, device, deadline)
    if jobs <= 1:
        before = library.set_torch_threads(threads)  # oversubscribed OpenMP threads spin
        try:
            for unit in plan:
                finished(unit, run_unit(unit, *arguments))
        finally:
            library.set_torch_threads(before)
    else:
        context = get_context("spawn")
        with ProcessPoolExecutor(jobs, context, _init_worker, (threads, niceness)) as pool:
            futures = [(unit, pool.submit(run_unit, unit, *arguments)) for unit in plan]
            for unit, future in futures:
                finished(unit, future.result())
    outcome.wall_s = time.time() - start
    computed = [n for n, r in outcome.results.items() if "variants" in r and n not in cached]
    log_invocation(out, Invocation(start, outcome.wall_s, computed))
    return outcome


def _init_worker(threads: int, niceness: int) -> None:
    library.set_torch_threads(threads)
    if niceness:
        os.nice(niceness)
