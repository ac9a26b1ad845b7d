"""iddpm.eval."""
