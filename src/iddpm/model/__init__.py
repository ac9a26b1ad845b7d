"""iddpm.model."""
