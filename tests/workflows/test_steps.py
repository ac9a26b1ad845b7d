"""The bound-optimal schedule job: its bound is never worse than the even spacing's, the
costs are cached and reused, and a damaged cached file is computed again."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import save_random_run, tiny_experiment
from iddpm.build import load_model
from iddpm.diffusion.respace import parse_steps
from iddpm.workflows.context import JobContext
from iddpm.workflows.steps import StepsJob, optimal_schedules, schedules

CTX = JobContext()


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


def test_costs_are_cached_and_a_damaged_cache_is_computed_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save_random_run(run, tiny_experiment())
    loaded = load_model(run)
    first = schedules(_job(run), loaded, CTX)
    (path,) = (run / "cache" / "step_costs").glob("*.pt")
    stamp = path.stat().st_mtime_ns
    assert schedules(_job(run), loaded, CTX) == first and path.stat().st_mtime_ns == stamp
    state = torch.load(path, weights_only=True)
    for damage in (
        lambda v: {**v, "kl": v["kl"][:5]},  # a table of the wrong shape
        lambda v: {"kl": v["kl"]},
    ):
        torch.save({**state, "values": damage(state["values"])}, path)
        assert schedules(_job(run), loaded, CTX) == first
        assert torch.equal(
            torch.load(path, weights_only=True)["values"]["kl"], state["values"]["kl"]
        )
    path.write_bytes(b"not a torch file")
    assert schedules(_job(run), loaded, CTX) == first


def test_a_run_that_cannot_keep_a_cache_still_gets_its_schedules(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save_random_run(run, tiny_experiment())
    (run / "cache").write_text("")  # no folder can be made there (as on a read-only run)
    result = optimal_schedules(_job(run, out_dir=tmp_path / "out"))
    assert len(result["schedules"]) == 2 and (run / "cache").read_text() == ""


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
        schedules(job, load_model(run), CTX)
    assert not (run / "cache").exists()  # nothing computed, nothing written
