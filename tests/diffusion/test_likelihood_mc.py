"""Monte-Carlo bound `estimate_bits_per_dim`: input validation and the stratified design.

Its unbiasedness and the calibration of its standard error against the exact bound are
proven in tests/eval/test_bound_oracle.py.
"""

from __future__ import annotations

import pytest
import torch

from conftest import gaussian_oracle
from iddpm.diffusion import schedules
from iddpm.diffusion.gaussian import GaussianDiffusion, VarType
from iddpm.diffusion.likelihood_mc import estimate_bits_per_dim

GRID = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0


def _grid_images(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return GRID[torch.randint(0, 256, (n, *shape), generator=g)]


def _learned_var_diffusion(T: int) -> GaussianDiffusion:
    return GaussianDiffusion(schedules.get("cosine", T), var_type=VarType.LEARNED)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            {"method": "sobol"},
            r"unknown Monte-Carlo method 'sobol'; choose one of: stratified, log-stratified, imp",
        ),
        (
            {"num_samples_per_image": 0},
            r"num_samples_per_image must be an integer in \[1, 21\] \(one per",
        ),
        ({"method": "importance", "num_samples_per_image": 0}, r"must be an integer >= 1, got 0"),
        ({"num_samples_per_image": 22}, r"num_samples_per_image must be an integer in \[1, 21\]"),
        ({"method": "importance", "probs": torch.ones(20) / 20}, r"probs must be \[21\] positive"),
        ({"method": "importance", "probs": torch.eye(21)[0]}, r"zero-probability step would bias"),
        ({"probs": torch.ones(21) / 21}, r"probs only applies to method='importance'"),
    ],
)
def test_estimate_bits_per_dim_rejects_bad_inputs(kwargs, match) -> None:
    d = _learned_var_diffusion(21)
    kwargs = {"num_samples_per_image": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        estimate_bits_per_dim(
            gaussian_oracle(d, 0.0, 0.5), d, _grid_images(2, (1, 2, 2), 9), **kwargs
        )


def test_estimate_bits_per_dim_strata_cover_every_step_once() -> None:
    d = _learned_var_diffusion(23)
    x0 = _grid_images(50, (1, 1, 1), seed=10)
    r = estimate_bits_per_dim(
        gaussian_oracle(d, 0.0, 0.5),
        d,
        x0,
        num_samples_per_image=5,
        generator=torch.Generator().manual_seed(0),
        timestep_batch=2,
    )
    edges = [0, 4, 9, 13, 18, 23]  # floor(j·23/5)
    for j in range(5):
        assert ((r.timesteps[:, j] >= edges[j]) & (r.timesteps[:, j] < edges[j + 1])).all()
        assert (r.weights[:, j] == edges[j + 1] - edges[j]).all()
    assert r.weights[0].sum() == 23
    torch.testing.assert_close(r.total_bpd, r.prior_bpd + (r.weights * r.terms_bpd).sum(1))
    assert r.stderr.shape == (50,) and torch.isfinite(r.stderr).all()


def test_log_strata_start_with_single_steps_and_cover_every_step_once() -> None:
    from iddpm.diffusion.likelihood_mc import _log_strata

    starts, sizes = _log_strata(1000, 16)
    assert sizes.tolist() == [1, 1, 1, 2, 3, 5, 7, 11, 17, 26, 41, 62, 96, 148, 228, 351]
    assert starts[0] == 0 and int(sizes.sum()) == 1000
    torch.testing.assert_close(starts[1:], (starts + sizes)[:-1])
    for T, k in [(24, 5), (10, 10), (4000, 64), (7, 3)]:
        starts, sizes = _log_strata(T, k)
        assert len(sizes) == k and bool((sizes >= 1).all()) and int(sizes.sum()) == T


@pytest.mark.parametrize("method", ["log-stratified", "importance"])
def test_per_image_estimates_do_not_depend_on_the_batch_size(method: str) -> None:
    # With one generator per image, image i's steps and noise come from (seed, i) alone.
    from iddpm.diffusion.samplers import per_sample_generators

    d = _learned_var_diffusion(40)
    x0 = _grid_images(21, (1, 2, 2), seed=12)
    model = gaussian_oracle(d, 0.0, 0.5)

    def run(batch: int, timestep_batch: int) -> torch.Tensor:
        out = []
        for lo in range(0, 21, batch):
            r = estimate_bits_per_dim(
                model,
                d,
                x0[lo : lo + batch],
                num_samples_per_image=6,
                method=method,
                generator=per_sample_generators(5, range(lo, min(lo + batch, 21))),
                timestep_batch=timestep_batch,
            )
            out.append(torch.cat([r.total_bpd[:, None], r.timesteps.double(), r.terms_bpd], 1))
        return torch.cat(out)

    whole = run(21, 6)
    for batch, tb in ((1, 1), (7, 4)):
        torch.testing.assert_close(run(batch, tb), whole, rtol=0, atol=0)
    assert whole[:, 1:7].std(0).max() > 0  # the steps differ between images
