"""The paper's ablations (Tables 1–2) at small scale: train each arm, measure it, verdict.

    python -m experiments.ablate --help          (from the repository root)

Modules, in the order the work flows:
  plan      objectives, units (trained models), arms (table rows), the shared budget
  library   every call into the `iddpm` package (train, load, bits/dim, sample, FID, plots)
  cache     the output folder's layout and JSON files (a rerun skips finished work)
  run       train and evaluate units, in worker processes
  stats     curve smoothness, per-arm spread over seeds, paired differences with u
  verdicts  one verdict per claim of the paper
  figures, results_files, report, template
            docs/reproduction.md (prose in report_template.md), its figures and results
"""

# First, so that iddpm's OpenMP wait policy is chosen before anything loads torch.
from experiments.ablate import library as _library  # noqa: F401
