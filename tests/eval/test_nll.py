"""Dataset bits/dim: evaluate_nll equals the library's bits_per_dim, CSV of the terms."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from conftest import pixelwise_loaded_model
from iddpm._tensor import to_model_range
from iddpm.build import load_model, spaced
from iddpm.config import EvalConfig
from iddpm.data.bundled import load_digits
from iddpm.diffusion.likelihood import bits_per_dim
from iddpm.diffusion.samplers import per_sample_generators
from iddpm.eval.nll import evaluate_nll, write_terms_csv


@pytest.fixture
def digits_test_images() -> np.ndarray:
    return load_digits("test").images[:6]


@pytest.mark.parametrize("steps", ["", "5"])
def test_evaluate_nll_equals_bits_per_dim(random_run, digits_test_images, steps: str) -> None:
    run, _ = random_run
    loaded = load_model(run)
    cfg = EvalConfig(batch_size=4, timestep_batch=3, steps=steps, seed=2)
    result = evaluate_nll(loaded, digits_test_images, None, cfg)
    # The same computation by hand: batches of 4, image i with its generator of (seed, i).
    diffusion, model_fn = spaced(loaded.model, loaded.config.diffusion, steps)
    want = []
    for lo in (0, 4):
        x0 = to_model_range(digits_test_images[lo : lo + 4])
        gen = per_sample_generators(2, range(lo, lo + len(x0)))
        want.append(bits_per_dim(model_fn, diffusion, x0, timestep_batch=3, generator=gen))
    total = torch.cat([w.total_bpd for w in want]).numpy()
    np.testing.assert_array_equal(result.total_bpd, total)
    terms = torch.cat([w.vb_bpd for w in want]).mean(0).numpy()
    np.testing.assert_allclose(result.terms_bpd, terms, rtol=1e-12)
    assert len(result.timesteps) == diffusion.num_timesteps
    s = result.summary()
    assert s["num_images"] == 6 and s["exact"] is True
    assert s["bpd"] == pytest.approx(float(total.mean()))
    assert s["bpd_stderr"] == pytest.approx(float(total.std(ddof=1) / np.sqrt(6)))


@pytest.mark.parametrize("mc_timesteps", [0, 4])
def test_per_image_bits_do_not_depend_on_the_batch_size(digits_test_images, mc_timesteps) -> None:
    # Image i's noise (and Monte-Carlo steps) come from (seed, i): batches of 1, 4 and 6
    # give bitwise identical results with a network that computes elementwise.
    loaded = pixelwise_loaded_model()
    runs = [
        evaluate_nll(
            loaded,
            digits_test_images,
            None,
            EvalConfig(batch_size=b, timestep_batch=t, mc_timesteps=mc_timesteps, seed=3),
        )
        for b, t in ((1, 7), (4, 16), (6, 3))
    ]
    for r in runs[1:]:
        np.testing.assert_array_equal(r.total_bpd, runs[0].total_bpd)
    assert len(set(runs[0].total_bpd.tolist())) == len(digits_test_images)


def test_per_image_bits_of_a_unet_agree_across_batch_sizes(random_run, digits_test_images) -> None:
    # A float32 UNet rounds differently for other batch shapes, nothing more: the noise
    # is the same, so the per-image results agree to float32 resolution.
    loaded = load_model(random_run[0])
    a, b = (
        evaluate_nll(loaded, digits_test_images, None, EvalConfig(batch_size=n, seed=3))
        for n in (1, 6)
    )
    np.testing.assert_allclose(a.total_bpd, b.total_bpd, rtol=1e-6)


def test_monte_carlo_mode_reports_no_terms(random_run, digits_test_images) -> None:
    run, _ = random_run
    loaded = load_model(run)
    exact = evaluate_nll(loaded, digits_test_images, None, EvalConfig(batch_size=6))
    mc = evaluate_nll(loaded, digits_test_images, None, EvalConfig(batch_size=6, mc_timesteps=4))
    assert mc.terms_bpd is None and not mc.exact
    # Same model, same images: the estimate is within a few standard errors of the bound.
    assert abs(mc.bpd - exact.bpd) < 6 * max(mc.stderr, 1e-3)


def test_terms_csv_rows_and_cumulative_share(random_run, digits_test_images, tmp_path) -> None:
    run, _ = random_run
    loaded = load_model(run)
    result = evaluate_nll(loaded, digits_test_images, None, EvalConfig(batch_size=6))
    path = write_terms_csv(tmp_path / "terms.csv", result)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == loaded.config.diffusion.num_timesteps + 1
    assert rows[-1]["timestep"] == "prior"
    shares = [float(r["cumulative_share"]) for r in rows]
    assert shares == sorted(shares) and shares[-1] == 1.0
    total = sum(float(r["term_bpd"]) for r in rows)
    assert total == pytest.approx(result.bpd, rel=1e-6)


def test_class_conditional_model_needs_labels(tmp_path, digits_test_images) -> None:
    from conftest import save_random_run, tiny_experiment

    save_random_run(tmp_path / "run", tiny_experiment(num_classes=10))
    loaded = load_model(tmp_path / "run")
    with pytest.raises(ValueError, match="class-conditional but the data has no labels"):
        evaluate_nll(loaded, digits_test_images, None, EvalConfig())
