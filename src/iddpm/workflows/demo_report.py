"""The demo's report page: its figures, its table of numbers and the commands that reproduce
each of them (the numbers come in; files go out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iddpm.checkpoint import run_dir
from iddpm.config import ExperimentConfig
from iddpm.diffusion import registry
from iddpm.eval.nll import NllResult, write_terms_csv
from iddpm.workflows.plots import plot_bound_terms, plot_schedules, plot_training_curves
from iddpm.workflows.report import markdown_table, write_report

INTRO = (
    "Improved DDPM (Nichol & Dhariwal, 2021) on scikit-learn's 8×8 digits: cosine "
    "schedule, learned-range variance, L_hybrid, trained on a CPU for the time shown."
)


def _label(s: dict[str, Any]) -> str:
    return f"{s['steps']} steps" + (
        "" if _paper_sampler(s) else f", {registry.get(s['sampler']).label}"
    )


def _paper_sampler(s: dict[str, Any]) -> bool:
    return s["sampler"] == registry.DEFAULT


def _grid_text(s: dict[str, Any]) -> str:
    return (
        f"digits-FID {s['fid']:.2f}; {100 * s['confident_fraction']:.0f}% of samples are "
        f"labelled with p ≥ 0.9 by a classifier trained on the real digits."
    )


def _training_figures(training: dict) -> list:
    """The training report's (`iddpm report`) held-out curves, FID over training and
    learned-Σ audit, linked from its folder."""
    wanted = {
        "held_out_vs_training_bits_dim.png": (
            "Held-out vs training bits/dim",
            "The Monte-Carlo bound of 200 test and 200 training digits during training "
            "(EMA weights, the same noise at every evaluation; bands: ± 2 s.e.).",
        ),
        "fid_over_training.png": (
            "FID over training",
            "digits-FID of 256 samples (25 ancestral steps, the same seeds) during training.",
        ),
        "learned_sigma_audit.png": (
            "Learned-Σ audit",
            "The learned reverse variance per step against Analytic-DPM's optimal variance "
            "for the same model: on the dashed line, L_hybrid learned the optimal Σ.",
        ),
    }
    figures = []
    for png in training.get("figures", []):
        if Path(png).name in wanted:
            caption, text = wanted[Path(png).name]
            figures.append((caption, Path(png), text))
    return figures


def _figures(
    run: Path, cfg: ExperimentConfig, sets: list[dict], nll: NllResult, board: dict
) -> list:
    plots = run_dir(run).plots
    figures = [(f"Samples, {_label(s)}", Path(s["grid"]), _grid_text(s)) for s in sets]
    if board.get("fid_plot"):
        figures.append(
            (
                "Sample quality per network call",
                Path(board["fid_plot"]),
                "digits-FID of each sampler at a few network calls (NFE): the paper's "
                "ancestral sampler with learned Σ, DDIM (η = 0), DPM-Solver++(2M), its "
                "stochastic variant SDE-DPM-Solver++(2M) and Analytic-DPM's variance; in "
                "brackets precision / recall (k = 3).\n\n" + _board_table(board),
            )
        )
    if run_dir(run).metrics_path.is_file():  # a run shorter than one logging interval has none
        curves = plot_training_curves(plots / "training_curves.png", run_dir(run).metrics_path)
        text = "Loss of L_hybrid per example, and the loss by timestep quartile (q0: small t)."
        figures.append(("Training curves", curves, text))
    figures.append(
        (
            "Where the bits are",
            plot_bound_terms(plots / "bound_terms.png", nll.terms_bpd, float(nll.prior_bpd.mean())),
            "Each term of the variational bound on the test split, and its cumulative share: "
            "most of the bits are spent at the first few steps (the paper's Figure 2 view).",
        )
    )
    figures.append(
        (
            "Noise schedules",
            plot_schedules(plots / "schedules.png", cfg.diffusion.num_timesteps),
            "ᾱ_t of the linear and cosine schedules (the paper's Figure 5 view).",
        )
    )
    return figures


def _numbers(trained: dict, sets: list[dict], headline: dict, num: int, n_nll: int) -> list:
    numbers = [
        ("training", f"{trained['step']} steps", f"{trained['wall_s']:.0f} s"),
        (
            "test bits/dim (exact bound)",
            headline["bpd"],
            f"± {headline['bpd_stderr']:.3f} (s.e., {n_nll} images)",
        ),
    ]
    for s in sets:
        note = f"{num} samples vs train split; not Inception FID"
        numbers.append((f"digits-FID, {_label(s)}", s["fid"], note))
        numbers.append((f"confident samples, {_label(s)}", s["confident_fraction"], "p ≥ 0.9"))
    return numbers


def _commands(run: Path, sets: list[dict], seed: int, num: int, terms_csv: Path) -> dict:
    r = str(run)
    commands = {
        "Train (the demo stops on its time budget)": f"iddpm train --preset digits --run-dir {r}"
    }
    for s in sets:
        cmd = f"iddpm sample {r} --num {num} --seed {seed} --steps {s['steps']}"
        if not _paper_sampler(s):
            cmd += f" --sampler {s['sampler']}"
        commands[f"Samples, {_label(s)}"] = cmd
    commands["Bits/dim and the terms plot"] = f"iddpm nll {r} --split test --seed {seed}"
    commands["digits-FID"] = "iddpm fid SAMPLES.npz --ref digits"
    commands["Per-term values"] = f"cat {terms_csv}"
    commands["The training report (report/report.md)"] = f"iddpm report {r}"
    return commands


TIE_MARKS = {"best": "**", "tie": "≈", "worse": ""}


def _board_cell(r: dict) -> str:
    """digits-FID ± half its 95% interval (precision / recall); the best row in bold,
    rows not significantly worse than it marked ≈."""
    pr = "" if r.get("precision") is None else f" ({r['precision']:.2f} / {r['recall']:.2f})"
    half = ""
    if r.get("fid_low") is not None and r.get("fid_high") is not None:
        half = f" ± {(r['fid_high'] - r['fid_low']) / 2:.1f}"
    mark = TIE_MARKS.get(r.get("fid_vs_best", "worse"), "")
    fid = f"**{r['fid']:.2f}**" if mark == "**" else f"{mark}{r['fid']:.2f}"
    return f"{fid}{half}{pr}"


def _board_table(board: dict) -> str:
    """sampler × NFE: digits-FID ± half its interval (precision / recall), and a key to
    the marks."""

    def column(r: dict) -> int:  # the call budget asked for (Heun's 2K - 1 calls fit in it)
        return r.get("nfe_budget") or r["steps"]

    counts = sorted({column(r) for r in board["rows"]})
    cells: dict[str, dict[int, str]] = {}
    for r in board["rows"]:
        cells.setdefault(r["sampler"], {})[column(r)] = _board_cell(r)
    rows = [[name, *(c.get(k, "") for k in counts)] for name, c in cells.items()]
    table = markdown_table(rows, ["sampler", *(f"{k} NFE" for k in counts)])
    return (
        f"{table}\n\nBold: the lowest digits-FID; ≈: not significantly worse than it (paired "
        "bootstrap of the difference, 95%: every row is drawn with the same seed); ± half a "
        "95% bootstrap interval. Numbers from this many samples are comparable only with "
        "each other (docs/evaluation.md)."
    )


def _conditional_figure(cond: dict) -> tuple[str, Path, str]:
    """The class grid and a table of guidance scale W → quality and class accuracy."""
    rows = [
        [
            f"{r['guidance_scale']:g}",
            f"{r['fid']:.2f}",
            f"{r['precision']:.2f} / {r['recall']:.2f}",
            f"{100 * r['class_accuracy']:.1f}%",
            str(r["network_rows_per_sample"]),
        ]
        for r in cond["rows"]
    ]
    table = markdown_table(
        rows, ["W", "digits-FID", "precision / recall", "labelled as asked", "network rows"]
    )
    text = (
        f"Classifier-free guidance (one row per class, W = {cond['grid_scale']:g}): "
        "ε = ε_∅ + W(ε_y − ε_∅) from one network trained with class dropout; W = 1 is the "
        "conditional model, W = 0 the unconditional one. 'Labelled as asked': the share of "
        "samples that the digits classifier assigns to the class they were drawn for.\n\n" + table
    )
    return ("Class-conditional samples and guidance", Path(cond["grid"]), text)


def write_demo_report(
    job: Any,
    cfg: ExperimentConfig,
    trained: dict[str, Any],
    sets: list[dict[str, Any]],
    nll: NllResult,
    headline: dict[str, Any],
    board: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    cond: dict[str, Any] | None = None,
) -> Path:
    """RUN_DIR/report.md with sample grids, curves, the bound's terms, the schedules, a
    table of the headline numbers and the commands that reproduce them; `training`: what
    `iddpm report` wrote for the run (its held-out curves and Σ audit are shown too)."""
    run = job.run_dir
    terms_csv = write_terms_csv(run_dir(run).eval / "nll_test_terms.csv", nll)
    n_nll = len(nll.total_bpd)
    figures = _figures(run, cfg, sets, nll, board or {}) + _training_figures(training or {})
    commands = _commands(run, sets, job.seed, job.num_samples, terms_csv)
    preset = getattr(job, "preset", "digits")
    commands["Train (the demo stops on its time budget)"] = (
        f"iddpm train --preset {preset} --run-dir {run}"
    )
    if cond:
        figures.insert(len(sets), _conditional_figure(cond))
        commands["Guided samples"] = (
            f"iddpm sample {run} --num {job.num_samples} --steps {job.sample_steps} "
            f"--guidance-scale {cond['grid_scale']:g}"
        )
    return write_report(
        run / "report.md",
        "iddpm demo",
        INTRO,
        _numbers(trained, sets, headline, job.num_samples, n_nll),
        figures,
        commands,
    )
