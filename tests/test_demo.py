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
    board = headline["leaderboard_fid"]  # every leaderboard sampler at every NFE
    samplers = ("ancestral", "ddim", "dpmpp2m", "dpmpp2m-sde", "analytic", "unipc", "ipndm")
    calls = {"heun": (5, 9, 19)}  # 2K - 1 calls: the most that fit in 5, 10, 20
    expected = {f"{s}_{k}" for s in samplers for k in (5, 10, 20)}
    assert set(board) == expected | {f"heun_{k}" for k in calls["heun"]}
    assert "Sample quality per network call" in (run / "report.md").read_text()
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
