"""iddpm: Improved Denoising Diffusion Probabilistic Models (Nichol & Dhariwal, 2021).

The public API in one import; see README.md for a quick start and docs/paper_to_code.md
for where each equation lives. Names are resolved on first use, so `import iddpm` (and
the command line's start-up) does not load torch before it is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "to_model_range": "iddpm._tensor",
    "to_uint8": "iddpm._tensor",
    "DiffusionConfig": "iddpm.config",
    "EvalConfig": "iddpm.config",
    "ExperimentConfig": "iddpm.config",
    "SampleConfig": "iddpm.config",
    "TrainConfig": "iddpm.config",
    "UNetConfig": "iddpm.config",
    "load_digits": "iddpm.data.bundled",
    "GaussianDiffusion": "iddpm.diffusion.gaussian",
    "MeanType": "iddpm.diffusion.gaussian",
    "VarType": "iddpm.diffusion.gaussian",
    "bits_per_dim": "iddpm.diffusion.likelihood",
    "estimate_bits_per_dim": "iddpm.diffusion.likelihood_mc",
    "training_losses": "iddpm.diffusion.losses",
    "parse_steps": "iddpm.diffusion.respace",
    "respace": "iddpm.diffusion.respace",
    "spaced_model": "iddpm.diffusion.respace",
    "LossSecondMomentSampler": "iddpm.diffusion.timestep_sampler",
    "UniformSampler": "iddpm.diffusion.timestep_sampler",
    "UNet": "iddpm.model.unet",
}
_MODULES = {"samplers": "iddpm.diffusion.samplers", "schedules": "iddpm.diffusion.schedules"}

__all__ = sorted([*_EXPORTS, *_MODULES])


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'iddpm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
