"""Existing samplers' outputs, bit for bit, against outputs recorded before the sampler
contract changed (issue 16: "samples stay bitwise identical for every existing sampler").

`sampler_reference.npz` holds, for every case below, the float64 (and one float32) samples
drawn at commit 45d658e, before the loops took x_T and a noise source. The data is
nonlinear (conftest's `discrete_oracle`: each dimension uniform on 3 points) with a
learned-range Σ, so the mean, the variance channels, the clip and every noise draw matter.
Regenerate only for a deliberate change of a sampler's numbers:

    PYTHONPATH=src python tests/diffusion/test_sampler_reference.py --write
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import discrete_oracle
from iddpm.diffusion import registry, schedules
from iddpm.diffusion.analytic import AnalyticOptions
from iddpm.diffusion.dpm_solver import SDEOptions
from iddpm.diffusion.gaussian import GaussianDiffusion, VarType
from iddpm.diffusion.respace import parse_steps, respace
from iddpm.diffusion.samplers import per_sample_generators

FILE = Path(__file__).with_name("sampler_reference.npz")
POINTS = torch.tensor([-0.8, 0.1, 0.9])
SPECS = ("10", "trailing7", "at:0,3,50,400,999")
# name -> options (analytic: a fixed Γ table, shaped per process below)
OPTIONS = {
    "ancestral": [None],
    "ddim": [registry.make_options("ddim"), registry.make_options("ddim", {"eta": 0.5})],
    "dpmpp2m": [None],
    "dpmpp3m": [None],
    "dpmpp2m-sde": [SDEOptions(), SDEOptions(eta=0.5)],
    "analytic": ["gamma"],
}


def process(spec: str) -> GaussianDiffusion:
    base = GaussianDiffusion(schedules.get("cosine", 1000), var_type=VarType.LEARNED_RANGE)
    return respace(base, parse_steps(spec, 1000, alphas_cumprod=base.alphas_cumprod))[0]


def cases() -> list[tuple[str, str, int, str, str]]:
    """(key, sampler, option index, spec, randomness) of every recorded case."""
    out = []
    for name, opts in OPTIONS.items():
        for i in range(len(opts)):
            for spec in SPECS:
                for rand in ("per-sample", "batch", "noise", "float32"):
                    out.append((f"{name}|{i}|{spec}|{rand}", name, i, spec, rand))
    return out


def draw(name: str, i: int, spec: str, rand: str) -> np.ndarray:
    d = process(spec)
    opt = OPTIONS[name][i]
    if opt == "gamma":
        k = d.num_timesteps
        opt = AnalyticOptions(eps_moments=tuple(0.5 + 0.5 * j / k for j in range(k)))
    dtype = torch.float32 if rand == "float32" else torch.float64
    kw: dict = {"shape": (3, 1, 2, 2)}
    if rand == "batch":
        kw["generator"] = torch.Generator().manual_seed(5)
    else:
        kw["generator"] = per_sample_generators(5, [0, 7, 2])
    if rand == "noise":
        kw = {
            "noise": torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(9)),
            "generator": per_sample_generators(6, [1, 2, 3]),
        }
    x = registry.sample(
        name, discrete_oracle(d, POINTS), d, options=opt, dtype=dtype, clip_denoised=True, **kw
    )
    return x.numpy()


@pytest.mark.parametrize("name", list(OPTIONS))
def test_samples_are_bitwise_those_recorded(name: str) -> None:
    with np.load(FILE) as ref:
        for key, sampler, i, spec, rand in cases():
            if sampler == name:
                got = draw(sampler, i, spec, rand)
                assert got.dtype == ref[key].dtype, key
                assert np.array_equal(got, ref[key]), (key, np.abs(got - ref[key]).max())


def test_every_recorded_sampler_is_registered() -> None:
    assert set(OPTIONS) <= set(registry.names())


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    np.savez_compressed(FILE, **{key: draw(*rest) for key, *rest in cases()})
    print(f"wrote {FILE}")
