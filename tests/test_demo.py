"""`iddpm demo` end to end in a reduced form (seconds), so CI keeps the main job working."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from iddpm.cli import cli


@pytest.mark.slow
def test_reduced_demo_writes_report_and_headline(tmp_path) -> None:
    run = tmp_path / "demo"
    args = ["demo", "--run-dir", str(run), "--minutes", "1", "--max-steps", "20",
            "--num-samples", "4", "--sample-steps", "5", "--nll-images", "2",
            "--diffusion-steps", "40", "--stats-images", "100"]  # fmt: skip
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    headline = json.loads(res.stdout.strip().splitlines()[-1])
    assert headline["train_steps"] == 20  # one logged interval: the training report has curves
    assert headline["bpd"] > 0 and headline["nll_images"] == 2
    for key in ("fid_5steps", "fid_40steps", "confident_fraction_5steps"):
        assert key in headline
    board = headline["leaderboard_fid"]  # every leaderboard sampler at every call budget
    samplers = ("ancestral", "ddim", "dpmpp2m", "dpmpp2m-sde", "analytic", "unipc", "ipndm")
    samplers += ("heun",)  # 2K - 1 calls: 5, 9, 19 in the budgets 5, 10, 20
    assert set(board) == {f"{s}_{k}" for s in samplers for k in (5, 10, 20)}
    assert "Sample quality per network call" in (run / "report.md").read_text()
    # one column per budget: Heun's 9 calls stand under "10 NFE", not under a column of its own
    assert "| sampler | 5 NFE | 10 NFE | 20 NFE |" in (run / "report.md").read_text()
    heun = json.loads((run / "leaderboard" / "sweep.json").read_text())["rows"]
    heun = [(r["nfe"], r["nfe_budget"]) for r in heun if r["sampler"].startswith("heun")]
    assert heun == [(5, 5), (9, 10), (19, 20)]
    assert json.loads((run / "demo_result.json").read_text()) == headline
    report = (run / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(links) >= 4
    for link in links:
        assert (run / link).stat().st_size > 0, link
    assert "iddpm nll" in report and "bits/dim" in report
    # the training report (`iddpm report`) is written too, and the demo shows its audit
    assert headline["training_report"] == str(run / "report" / "report.md")
    assert (
        "## Learned-Σ audit" in report
        and "## Learned-Σ audit" in (run / "report" / "report.md").read_text()
    )


@pytest.mark.slow
def test_conditional_demo_adds_the_guidance_section(tmp_path) -> None:
    run = tmp_path / "demo"
    args = ["demo", "--preset", "digits-cond", "--run-dir", str(run), "--minutes", "0.05",
            "--max-steps", "4", "--num-samples", "10", "--sample-steps", "3",
            "--nll-images", "2", "--diffusion-steps", "40", "--stats-images", "100"]  # fmt: skip
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    headline = json.loads(res.stdout.strip().splitlines()[-1])
    for w in ("0", "1", "3"):
        assert 0 <= headline[f"class_accuracy_w{w}"] <= 1 and headline[f"fid_w{w}"] > 0
    report = (run / "report.md").read_text()
    assert "Class-conditional samples and guidance" in report and "--guidance-scale 3" in report
    assert "--preset digits-cond" in report
