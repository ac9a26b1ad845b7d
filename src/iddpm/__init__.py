"""iddpm: Improved Denoising Diffusion Probabilistic Models (Nichol & Dhariwal, 2021)."""

__version__ = "0.1.0"
