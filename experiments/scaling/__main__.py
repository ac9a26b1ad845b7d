"""`python -m experiments.scaling`: the width ladder on the digits, one FLOP budget.

Each width of the digits preset's UNet trains for budget / (its FLOPs per step) steps with
the periodic evaluation on (held-out bound of 100 test images at 4 points, digits-FID of
256 ancestral 25-step samples at 2), so every run leaves its curves against training
compute in its metrics.jsonl. The report plots them, marks the compute-efficient frontier
and fits a power law y = a·C^b to it with a 95% interval on b. Finished runs are reused
from --out. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from experiments.scaling.ladder import (
    flops_per_step,
    num_parameters,
    steps_for_budget,
    width_config,
)
from experiments.scaling.report import write_scaling_report
from iddpm._io import read_jsonl, write_json
from iddpm.workflows.train import TrainJob, train


def _run_width(width: int, budget: float, out: Path) -> dict:
    probe = width_config(width, 8)
    per_step = flops_per_step(probe)
    steps = steps_for_budget(budget, per_step)
    cfg = width_config(width, steps)
    run = out / f"width{width}"
    result_file = run / "train_result.json"
    if not result_file.is_file():
        start = time.perf_counter()
        summary = train(TrainJob(cfg, run))
        summary["total_wall_s"] = time.perf_counter() - start
        write_json(result_file, summary)
    summary = json.loads(result_file.read_text())
    rows = read_jsonl(run / "metrics.jsonl")
    return {
        "width": width,
        "parameters": num_parameters(cfg),
        "flops_per_step": per_step,
        "steps": steps,
        "train_wall_s": summary.get("wall_s"),
        "evals": [
            {
                "step": r["step"],
                "compute": r["step"] * per_step,
                "heldout_bpd": r["eval_heldout_bpd"],
                "heldout_se": r["eval_heldout_bpd_se"],
                "train_bpd": r["eval_train_bpd"],
            }
            for r in rows
            if "eval_heldout_bpd" in r
        ],
        "fids": [
            {"step": r["step"], "compute": r["step"] * per_step, "fid": r["fid"]}
            for r in rows
            if "fid" in r
        ],
    }


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/scaling"))
@click.option("--widths", default="16,24,32,48,64", show_default=True)
@click.option(
    "--budget-steps",
    type=int,
    default=200,
    show_default=True,
    help="the FLOP budget, in training steps of the width-32 model (the digits preset's)",
)
@click.option("--report", type=click.Path(path_type=Path), default=Path("docs/scaling.md"))
def main(out: Path, widths: str, budget_steps: int, report: Path) -> None:
    """Train the ladder (or reuse it), fit, and write the report and its figures."""
    ladder = [int(w) for w in widths.split(",") if w.strip()]
    budget = float(budget_steps * flops_per_step(width_config(32, 8)))
    results = [_run_width(w, budget, out) for w in ladder]
    command = f"python -m experiments.scaling --widths {widths} --budget-steps {budget_steps}"
    summary = write_scaling_report(report, results, budget, budget_steps, command)
    write_json(out / "scaling.json", {"budget_flops": budget, "runs": results, **summary})
    click.echo(json.dumps({"report": str(report), **summary}))


if __name__ == "__main__":
    main()
