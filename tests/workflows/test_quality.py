"""quality.mark_ties: rows within noise of the best are marked as ties (paired)."""

from __future__ import annotations

import numpy as np

from iddpm.workflows.quality import mark_ties


def test_paired_ties_and_clear_losses() -> None:
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 1.0, 201)  # seed noise common to every row (same seed)
    shared[0] = 0.0

    def row(fid: float, own: float) -> dict:
        values = fid + shared + rng.normal(0, own, 201)
        values[0] = fid
        return {"fid": fid, "_replicates": {"fid": values}}

    rows = [row(5.0, 0.05), row(5.02, 0.05), row(6.0, 0.05), {"fid": 9.0}]
    mark_ties(rows)
    # a 0.02 gap is inside the noise of the paired difference, a 1.0 gap is not, though
    # either is far inside each row's own (shared) spread of 1.0
    assert [r.get("fid_vs_best") for r in rows] == ["best", "tie", "worse", None]
    assert not any("_replicates" in r for r in rows)
