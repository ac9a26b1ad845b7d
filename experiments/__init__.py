"""Experiments that are not part of the installable `iddpm` package (docs/design.md §2).

Run them from the repository root, e.g. `python -m experiments.ablate --help`.
"""
