"""iddpm: Improved Denoising Diffusion Probabilistic Models (Nichol & Dhariwal, 2021).

The public API in one import; see README.md for a quick start and docs/paper_to_code.md
for where each equation lives.
"""

from iddpm._tensor import to_model_range, to_uint8
from iddpm.config import (
    DiffusionConfig,
    EvalConfig,
    ExperimentConfig,
    SampleConfig,
    TrainConfig,
    UNetConfig,
)
from iddpm.data.bundled import load_digits
from iddpm.diffusion import samplers, schedules
from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType, VarType
from iddpm.diffusion.likelihood import bits_per_dim
from iddpm.diffusion.likelihood_mc import estimate_bits_per_dim
from iddpm.diffusion.losses import training_losses
from iddpm.diffusion.respace import parse_steps, respace, spaced_model
from iddpm.diffusion.timestep_sampler import LossSecondMomentSampler, UniformSampler
from iddpm.model.unet import UNet

__version__ = "0.1.0"

__all__ = [
    "DiffusionConfig",
    "EvalConfig",
    "ExperimentConfig",
    "GaussianDiffusion",
    "LossSecondMomentSampler",
    "MeanType",
    "SampleConfig",
    "TrainConfig",
    "UNet",
    "UNetConfig",
    "UniformSampler",
    "VarType",
    "bits_per_dim",
    "estimate_bits_per_dim",
    "load_digits",
    "parse_steps",
    "respace",
    "samplers",
    "schedules",
    "spaced_model",
    "to_model_range",
    "to_uint8",
    "training_losses",
]
