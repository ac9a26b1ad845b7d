"""iddpm.data."""
