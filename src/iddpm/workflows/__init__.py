"""Whole jobs, each written once (docs/design.md §2, layer 4): train a run, sample to files,
bits/dim of a data set, sample quality against a reference, sweeps over samplers and step
counts, the demo and its report, converting reference checkpoints.

Each job is a function of config dataclasses that validates everything it can before its
first write, returns a JSON-safe dict of results (and writes the same dict next to its
outputs), prints nothing, and reports progress through a `progress.Progress` callback.
The command line (`iddpm.cli`) maps argv to these configs and calls one job.
"""
