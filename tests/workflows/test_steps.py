"""The bound-optimal schedule job: its bound is never worse than the even spacing's, the
costs are cached and reused, and a cached file for another setting is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import save_random_run, tiny_experiment
from iddpm.build import load_model
from iddpm.diffusion.respace import parse_steps
from iddpm.workflows.steps import StepsJob, optimal_schedules, schedules


def _job(run: Path, **kw) -> StepsJob:
    return StepsJob(run, nfe=(3, 5), num_images=32, batch_size=32, timestep_batch=10, **kw)


def test_least_bound_schedules_beat_even_spacing_and_parse(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save_random_run(run, tiny_experiment())  # T = 20
    result = optimal_schedules(_job(run))
    for row in result["schedules"]:
        assert row["bound_bpd"] <= row["even_bound_bpd"] + 1e-9
        kept = parse_steps(row["spec"], 20)
        assert len(kept) == row["nfe"]
    assert (run / "eval" / "steps_model.json").is_file()


@pytest.mark.slow  # 355 images x 20 steps: ~5 s
def test_the_summary_counts_the_images_the_costs_came_from(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save_random_run(run, tiny_experiment())
    job = StepsJob(run, nfe=(3,), split="test", num_images=400, batch_size=400, decoder_steps=1)
    result = optimal_schedules(job)  # the digits test split holds 355 images, not 400
    assert result["num_images"] == 355 and result["schedules"][0]["num_images"] == 355
    assert _job(run).split == "train"  # schedules are chosen on training images by default


def test_costs_are_cached_and_a_foreign_cache_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save_random_run(run, tiny_experiment())
    loaded = load_model(run)
    first = schedules(_job(run), loaded, "cpu")
    (path,) = (run / "cache" / "step_costs").glob("*.pt")
    stamp = path.stat().st_mtime_ns
    assert schedules(_job(run), loaded, "cpu") == first and path.stat().st_mtime_ns == stamp
    state = torch.load(path, weights_only=True)
    state["meta"] = state["meta"].replace('"seed": 0', '"seed": 9')
    torch.save(state, path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="belong to another checkpoint or setting"):
        schedules(_job(run), loaded, "cpu")
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"nfe": (0,)}, r"--nfe \[0\]"), ({"nfe": (21,)}, r"in \[1, 20\]"),
     ({"sigma": "fixed"}, "unknown --sigma"), ({"num_images": 3}, "too few")],
)  # fmt: skip
def test_bad_requests_are_one_line_errors(tmp_path: Path, kw: dict, message: str) -> None:
    run = tmp_path / "run"
    save_random_run(run, tiny_experiment())
    job = StepsJob(run, **{"nfe": (3,), "num_images": 32, **kw})
    with pytest.raises(ValueError, match=message):
        schedules(job, load_model(run), "cpu")
    assert not (run / "cache").exists()  # nothing computed, nothing written
