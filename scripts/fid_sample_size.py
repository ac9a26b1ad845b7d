"""How many samples a digits-FID needs: its seed-to-seed spread against the sample count.

    python scripts/fid_sample_size.py SAMPLES.npz [--sizes 250,500,1000,2000,3000]
                                      [--bootstrap 100] [--out docs/results/digits_fid_vs_n.json]

SAMPLES holds many samples of one model drawn with one seed (sample i depends only on
(seed, i), so disjoint index ranges are independent draws, like other seeds). For each size
N the samples are cut into disjoint sets of N; the digits-FID of each against the digits
training set gives the mean and the s.d. across sets (the seed spread), and the Poisson
bootstrap of the first set (--bootstrap B replicates) gives the s.d. a single run reports.
A fit s.d.(N) = c/√N over the sizes gives the N at which the s.d. is 0.5 and the N at
which a 95% interval is ±0.5 (1.96·s.d. = 0.5). Prints (and writes) one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from iddpm.data.bundled import load_digits
from iddpm.data.images import load_npz
from iddpm.eval.bootstrap import poisson_weights
from iddpm.eval.features import DigitsFeatureExtractor
from iddpm.eval.fid import FeatureStats, fid_from_stats
from iddpm.eval.moments import ReplicatedMoments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("samples", type=Path)
    parser.add_argument("--sizes", default="250,500,1000,2000,3000")
    parser.add_argument("--bootstrap", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    ex = DigitsFeatureExtractor()
    feats = ex(load_npz(args.samples).images)
    ref = FeatureStats(dim=ex.dim, extractor=ex.name).add(ex(load_digits("train").images))
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        sets = [feats[k * n : (k + 1) * n] for k in range(len(feats) // n)]
        fids = [
            fid_from_stats(FeatureStats(dim=ex.dim, extractor=ex.name).add(f), ref) for f in sets
        ]
        m = ReplicatedMoments(ex.dim, 1 + args.bootstrap, ex.name)
        m.add(sets[0], poisson_weights(0, 0, n, args.bootstrap))
        boot = m.distances_to(ref)[1:]
        rows.append({
            "n": n,
            "sets": len(sets),
            "mean_fid": float(np.mean(fids)),
            "sd_across_sets": float(np.std(fids, ddof=1)) if len(sets) > 1 else None,
            "bootstrap_sd_first_set": float(np.std(boot, ddof=1)),
            "fids": [round(f, 4) for f in fids],
        })  # fmt: skip
    usable = [r for r in rows if r["sets"] >= 3]
    c_sets = float(np.mean([r["sd_across_sets"] * np.sqrt(r["n"]) for r in usable]))
    c_boot = float(np.mean([r["bootstrap_sd_first_set"] * np.sqrt(r["n"]) for r in rows]))
    result = {
        "script": "scripts/fid_sample_size.py",
        "samples": str(args.samples),
        "num_samples": len(feats),
        "reference": "digits train (1,442 images)",
        "features": ex.name,
        "rows": rows,
        "fit": "sd(N) = c / sqrt(N); c from the sizes with at least 3 disjoint sets",
        "c_across_sets": c_sets,
        "c_bootstrap": c_boot,
        "n_for_sd_0.5": int(np.ceil((c_sets / 0.5) ** 2)),
        "n_for_95pct_halfwidth_0.5": int(np.ceil((1.96 * c_sets / 0.5) ** 2)),
    }
    text = json.dumps(result, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
