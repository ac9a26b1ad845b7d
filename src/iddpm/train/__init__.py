"""iddpm.train."""
