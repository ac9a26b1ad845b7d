"""Plots: each writes a non-blank PNG of the documented size; bad input fails with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iddpm.workflows import plots


def _png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img)


def _assert_figure(path: Path, width_in: float, height_in: float) -> None:
    arr = _png(path)
    assert arr.shape[:2] == (round(height_in * plots.DPI), round(width_in * plots.DPI))
    assert arr.std() > 10  # something was drawn on the white canvas


def test_plot_schedules_writes_two_panel_png(tmp_path: Path) -> None:
    out = plots.plot_schedules(tmp_path / "figs" / "schedules.png", T=200)
    assert out == tmp_path / "figs" / "schedules.png"
    _assert_figure(out, 10.0, 4.0)


def test_plots_refuse_non_png_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ending in \.png"):
        plots.plot_schedules(tmp_path / "schedules.pdf", T=100)


def test_plot_bound_terms_writes_png(tmp_path: Path) -> None:
    t = np.arange(100)
    terms = 0.01 * np.exp(-t / 10) + 1e-5
    terms[0] = 0.8
    _assert_figure(plots.plot_bound_terms(tmp_path / "bound.png", terms, 1e-4), 10.0, 4.0)


@pytest.mark.parametrize(
    ("terms", "prior", "message"),
    [
        (np.ones((2, 3)), 0.1, "non-empty 1-d"),
        ([], 0.1, "non-empty 1-d"),
        ([0.1, np.nan], 0.1, "NaN or inf"),
        ([0.1, 0.2], float("inf"), "prior_bits must be finite"),
        ([0.0, 0.0], 0.0, "sum to 0 <= 0"),
    ],
)
def test_plot_bound_terms_rejects_bad_input(tmp_path: Path, terms, prior, message) -> None:
    with pytest.raises(ValueError, match=message):
        plots.plot_bound_terms(tmp_path / "b.png", terms, prior)


def _write_metrics(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_plot_training_curves_tolerates_missing_keys(tmp_path: Path) -> None:
    rows = [{"step": s, "loss": 1.0 / (1 + s), "lr": 1e-4} for s in range(0, 200, 10)]
    for r in rows[5:]:  # quartiles only appear once every bucket has been seen
        r.update({f"loss_q{q}": (4 - q) / (1 + r["step"]) for q in range(4)})
    rows.append({"loss": 0.001})  # no step: uses its line index
    rows.append({"step": 300, "loss": None, "mse": float("nan")})  # non-numeric values skipped
    metrics = _write_metrics(tmp_path / "metrics.jsonl", rows)
    _assert_figure(plots.plot_training_curves(tmp_path / "curves.png", metrics), 10.0, 4.0)


def test_plot_training_curves_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plots.plot_training_curves(tmp_path / "c.png", tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "loss": 0.5}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 2 is not JSON"):
        plots.plot_training_curves(tmp_path / "c.png", bad)
    empty = _write_metrics(tmp_path / "other.jsonl", [{"step": 1, "lr": 0.1}])
    with pytest.raises(ValueError, match="has no numeric loss"):
        plots.plot_training_curves(tmp_path / "c.png", empty)


def test_image_grid_places_each_image_at_its_tile() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (7, 5, 4, 3), dtype=np.uint8)
    grid = plots.image_grid(images, nrow=3, padding=2)
    assert grid.shape == (3 * (5 + 2) + 2, 3 * (4 + 2) + 2, 3)
    for i in range(7):
        r, c = divmod(i, 3)
        y, x = 2 + r * 7, 2 + c * 6
        np.testing.assert_array_equal(grid[y : y + 5, x : x + 4], images[i])
    assert (grid[:2] == 255).all() and (grid[-2:, -8:] == 255).all()  # border, empty tiles


@pytest.mark.parametrize(("n", "channels"), [(64, 1), (10, 3), (1, 1)])
def test_save_image_grid_is_the_grid_enlarged_by_nearest_neighbour(
    tmp_path: Path, n: int, channels: int
) -> None:
    images = np.random.default_rng(n).integers(0, 256, (n, 8, 8, channels), dtype=np.uint8)
    out = plots.save_image_grid(tmp_path / "grid.png", images, scale=4)
    arr = _png(out)
    grid = plots.image_grid(images)
    expected = np.kron(grid, np.ones((4, 4, 1), dtype=np.uint8))
    np.testing.assert_array_equal(arr.reshape(expected.shape), expected)


@pytest.mark.parametrize(
    ("images", "kwargs", "message"),
    [
        (np.zeros((4, 8, 8, 1), np.float32), {}, "uint8 numpy array"),
        ([[0]], {}, "uint8 numpy array"),
        (np.zeros((4, 8, 8), np.uint8), {}, r"\[N, H, W, C\]"),
        (np.zeros((4, 8, 8, 2), np.uint8), {}, "C in"),
        (np.zeros((0, 8, 8, 1), np.uint8), {}, "N >= 1"),
        (np.zeros((4, 8, 8, 1), np.uint8), {"scale": 0}, "scale must be an integer"),
        (np.zeros((4, 8, 8, 1), np.uint8), {"padding": -1}, "padding >= 0"),
    ],
)
def test_save_image_grid_rejects_bad_input(tmp_path: Path, images, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        plots.save_image_grid(tmp_path / "g.png", images, **kwargs)


def test_plot_metric_vs_steps_writes_png(tmp_path: Path) -> None:
    values = {"hybrid": [9.0, 6.0, 5.0, 4.8], "simple": [30.0, np.nan, 8.0, 4.9]}
    out = plots.plot_metric_vs_steps(tmp_path / "m.png", [25, 50, 100, 1000], values, "FID")
    _assert_figure(out, 6.5, 4.5)


@pytest.mark.parametrize(
    ("steps", "values", "message"),
    [
        ([25, 50], {"a": [1.0]}, "has 1 entries but there are 2 step counts"),
        ([25, 50], {}, "values is empty"),
        ([0, 50], {"a": [1.0, 2.0]}, "positive step counts"),
    ],
)
def test_plot_metric_vs_steps_rejects_bad_input(tmp_path: Path, steps, values, message) -> None:
    with pytest.raises(ValueError, match=message):
        plots.plot_metric_vs_steps(tmp_path / "m.png", steps, values, "FID")
