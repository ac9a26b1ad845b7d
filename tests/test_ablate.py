"""The ablation harness: configs per arm, curve and comparison statistics against closed
forms, and a seconds-long end-to-end run that must produce a well-formed report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from iddpm import ablate as ab
from iddpm.build import LoadedModel
from iddpm.cli import cli
from iddpm.presets import get_preset

TINY = ab.Settings(
    train_steps=3,
    nll_images=4,
    fid_samples=70,  # > 64 feature dimensions, so the covariances are full rank
    sample_steps=(5,),
    nll_batch=4,
    timestep_batch=5,
    curve_window=3,
    grid_images=4,
)


def test_unit_config_changes_only_diffusion_seed_and_budget() -> None:
    base = get_preset("digits")
    for objective, (loss, var_type, sampler, _) in ab.OBJECTIVES.items():
        cfg = ab.unit_config(ab.Unit("linear", 4000, objective, 7), TINY)
        assert cfg.diffusion.replace(
            num_timesteps=1000, schedule="cosine"
        ) == base.diffusion.replace(loss=loss, var_type=var_type, timestep_sampler=sampler)
        # one output channel per image channel for a fixed variance, two for learned
        assert cfg.model.out_channels == (1 if objective == "simple" else 2)
        assert cfg.model.replace(out_channels=2) == base.model
        t = cfg.train
        assert (t.steps, t.seed, t.log_every) == (3, 7, 1)
        assert (t.batch_size, t.lr, t.ema_rates) == (base.train.batch_size, base.train.lr, (0.999,))


def test_unit_config_rejects_unknown_objective() -> None:
    with pytest.raises(ValueError, match="unknown objective 'l1'"):
        ab.unit_config(ab.Unit("cosine", 10, "l1", 0), TINY)


def test_default_plan_puts_first_seed_of_each_schedule_first_and_has_unique_units() -> None:
    plan = ab.default_plan((0, 1), (0,), 1000, 4000, ("hybrid", "vlb-importance"))
    names = [u.name for u in plan]
    assert len(set(names)) == len(names) == 4 + 4 + 4 + 2
    assert {u.schedule for u in plan[:4]} == {"cosine"} and {u.seed for u in plan[:8]} == {0}
    assert {u.schedule for u in plan[4:8]} == {"linear"}
    assert plan[8] == ab.Unit("cosine", 4000, "hybrid", 0)
    assert plan[-1] == ab.Unit("cosine", 4000, "vlb-importance", 0)


def test_sample_step_counts_adds_full_chain_only_up_to_the_limit() -> None:
    s = ab.Settings(sample_steps=(25, 50, 100, 250), full_chain_max_t=1000)
    assert ab.sample_step_counts(1000, s) == [25, 50, 100, 250, 1000]
    assert ab.sample_step_counts(4000, s) == [25, 50, 100, 250]
    assert ab.sample_step_counts(60, s) == [25, 50, 60]


def test_curve_stats_match_closed_form(tmp_path) -> None:
    # log loss alternates ±a over the second half: increments are ±2a, std 2a·sqrt(n/(n−1))
    a, n = 0.1, 201  # n odd: an even number of ±2a increments, whose mean is 0
    rng = np.random.default_rng(0)
    first = np.exp(rng.normal(size=n))  # discarded: only the second half counts
    second = np.exp(a * (-1.0) ** np.arange(n))
    path = tmp_path / "metrics.jsonl"
    rows = [
        {"step": i, "loss": float(v), "grad_norm": 2.0} for i, v in enumerate([*first, *second])
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    st = ab.curve_stats(path, window=3)
    m = n - 1
    assert st["log_loss_incr_std"] == pytest.approx(2 * a * math.sqrt(m / (m - 1)), rel=1e-9)
    # the 3-step moving average around +a is (−a + a − a)/3 = −a/3: residuals are ±4a/3
    assert st["log_loss_ma_std"] == pytest.approx(4 * a / 3, rel=0.01)
    assert st["log_grad_norm_incr_std"] == 0.0


def _row(arm, seed, bpd_images, **metrics):
    per = np.asarray(bpd_images, dtype=np.float64)
    return {
        "arm": arm,
        "seed": seed,
        "metrics": {"bpd": float(per.mean()), **metrics},
        "bpd_stderr": float(per.std(ddof=1) / math.sqrt(len(per))),
        "per_image_bpd": per,
    }


def test_compare_pairs_images_and_pools_seed_spread() -> None:
    A, B = ("cosine", 10, "hybrid", "learned-range"), ("linear", 10, "hybrid", "learned-range")
    base = np.array([1.0, 2.0, 3.0, 4.0])
    noise = np.array([0.1, -0.1, 0.1, -0.1])
    rows = [
        _row(A, 0, base, fid_10=5.0),
        _row(A, 1, base + 0.2, fid_10=6.0),
        _row(B, 0, base + 1.0 + noise, fid_10=9.0),
        _row(B, 1, base + 1.2 + noise, fid_10=10.0),
    ]
    # a noisier objective's spread must not leak into the L_hybrid comparison
    C = ("cosine", 10, "vlb-uniform", "learned-range")
    rows += [_row(C, 0, base + 5.0, fid_10=50.0), _row(C, 1, base + 9.0, fid_10=90.0)]
    c = ab.compare(rows, B, A, "bpd")
    # seed sd of bpd is 0.2/sqrt(2) in both arms; paired per-image s.e.: std(noise)/2
    s = 0.2 / math.sqrt(2)
    se2 = noise.var(ddof=1) / 4
    assert c["diff"] == pytest.approx(1.0)
    assert c["u"] == pytest.approx(math.sqrt(se2 + 2 * s**2) / math.sqrt(2))
    assert ab.judge(c) == "reproduced" and ab.judge(ab.compare(rows, A, B, "bpd")) == (
        "not reproduced"
    )
    f = ab.compare(rows, B, A, "fid_10")
    assert f["diff"] == 4.0 and f["u"] == pytest.approx(math.sqrt(2 * 0.5) / math.sqrt(2))
    missing = ab.compare(rows, A, ("cosine", 10, "simple", "fixed-small"), "bpd")
    assert missing["n"] == 0 and ab.judge(missing) == "inconclusive"


def test_with_var_type_refuses_learned_variance(tmp_path) -> None:
    cfg = ab.unit_config(ab.Unit("cosine", 10, "hybrid", 0), TINY)
    loaded = LoadedModel(cfg, None, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot evaluate a 'learned-range' model as"):
        ab.with_var_type(loaded, "fixed-small")
    simple = LoadedModel(ab.unit_config(ab.Unit("cosine", 10, "simple", 0), TINY), None, tmp_path)
    swapped = ab.with_var_type(simple, "fixed-small")  # type: ignore[arg-type]
    assert swapped.config.diffusion.var_type == "fixed-small"
    assert swapped.config.model == simple.config.model


def test_tiny_run_writes_report_results_and_resumes(tmp_path) -> None:
    plan = [ab.Unit("cosine", 25, "simple", 0), ab.Unit("cosine", 25, "hybrid", 0)]
    out, report = tmp_path / "out", tmp_path / "docs" / "reproduction.md"
    outcome = ab.run_plan(plan, TINY, out, jobs=1)
    assert all("variants" in r for r in outcome.results.values())
    meta = {
        "command": "iddpm ablate ...",
        "wall_s": outcome.wall_s,
        "machine": "test",
        "jobs": 1,
        "threads": 1,
        "seeds_text": "0",
    }
    res = ab.make_report(out, plan, TINY, report, meta)
    text = report.read_text()
    for heading in ("## Results in the paper's form", "## Verdicts", "## Gradient noise"):
        assert heading in text
    assert "σ²=β̃" in text and "iddpm ablate ..." in text
    doc = json.loads(
        (tmp_path / "docs" / "reproduction" / "results.json").read_text(),
        parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"),
    )
    # the L_simple model is evaluated twice (σ² = β and β̃), L_hybrid once
    assert sorted(u["var_type"] for u in doc["units"]) == [
        "fixed-large",
        "fixed-small",
        "learned-range",
    ]
    assert {u["objective"] for u in doc["units"] if u["var_type"] != "learned-range"} == {"simple"}
    assert all(set(u) >= {"bpd", "fid_5", "fid_25", "drop_5"} for u in doc["units"])
    assert set(doc["verdicts"]) == set(ab.CLAIMS) == set(res["verdicts"])
    assert set(res["verdicts"].values()) <= {"reproduced", "not reproduced", "inconclusive"}
    csv_lines = (tmp_path / "docs" / "reproduction" / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("arm,schedule,T,objective,var_type")
    pngs = sorted((tmp_path / "docs" / "reproduction").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert all(f"({p.parent.name}/{p.name})" in text for p in pngs)  # linked relative
    # a rerun reads every unit back from the cache and computes nothing
    ab.run_plan(plan, TINY, out, jobs=1)
    log = [json.loads(x) for x in (out / "invocations.jsonl").read_text().splitlines()]
    assert [sorted(e["computed"]) for e in log] == [sorted(u.name for u in plan), []]
    assert "Measured wall-clock" in text and "for 2 units" in text
    # cached results never mix budgets: other settings are refused, naming the fix
    other = ab.Settings(**{**TINY.__dict__, "fid_samples": 80})
    with pytest.raises(ValueError, match=r"was measured with other settings.*another --out"):
        ab.run_unit(plan[0], other, out)


def test_cli_rejects_unknown_long_objective() -> None:
    result = CliRunner().invoke(cli, ["ablate", "--long-objectives", "hybrid,l1"])
    assert result.exit_code == 2
    assert "unknown objective(s) ['l1']" in result.output + result.stderr
