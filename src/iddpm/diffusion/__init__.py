"""iddpm.diffusion."""
