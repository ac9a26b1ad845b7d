"""digits-FID of diffusers' schedulers run on an iddpm checkpoint: the outside baseline of
bench_samplers.py's few-step leaderboard (benchmark only: `pip install iddpm[bench]`).

How it runs: the scheduler is built from the checkpoint's own β (`trained_betas`, the
cosine schedule of T steps) with `prediction_type="epsilon"`, `thresholding=True` and
`sample_max_value=1.0` (dynamic thresholding with a maximum of 1 clips x̂0 to [−1, 1], as
iddpm's samplers do by default: without it, x̂0 = (x − σε̂)/α at the cosine schedule's top,
α = 5e-5, amplifies the network's error 2·10⁴-fold and UniPC scores FID 248 at 5 calls)
and otherwise its defaults; the network is iddpm's EMA model behind the same timestep
adapter iddpm's samplers
use, and only its ε channels are passed (a learned-Σ model's variance channels are
dropped). Sample i starts from the same x_T as iddpm's samplers (per-sample generators of
(seed, i)), so differences are the solver's. Network calls are counted, not assumed.

    python benchmarks/bench_diffusers.py --checkpoint RUN --nfe 5,10,20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

from _common import result_header
from iddpm.build import load_model, spaced
from iddpm.diffusion.samplers import per_sample_generators
from iddpm.generate import to_uint8
from iddpm.workflows.quality import extractor_for, reference, score

# name -> (scheduler class name, keyword arguments)
UNIPC, DPM, DEIS = (
    "UniPCMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DEISMultistepScheduler",
)
TRAILING, KARRAS = {"timestep_spacing": "trailing"}, {"use_karras_sigmas": True}
CONFIGS = {
    "unipc-bh2-o3-trailing": (UNIPC, {"solver_order": 3, **TRAILING}),
    "unipc-bh2-o2-trailing": (UNIPC, {"solver_order": 2, **TRAILING}),
    "unipc-bh2-o3-karras": (UNIPC, {"solver_order": 3, **KARRAS}),
    "dpmpp2m-trailing": (DPM, {"solver_order": 2, **TRAILING}),
    "dpmpp2m-karras": (DPM, {"solver_order": 2, **KARRAS}),
    "dpmpp3m-trailing": (DPM, {"solver_order": 3, **TRAILING}),
    "deis-o3-trailing": (DEIS, {"solver_order": 3, **TRAILING}),
}


def sample(loaded, name: str, nfe: int, num: int, seed: int, batch: int, device) -> tuple:
    import diffusers

    cls_name, kwargs = CONFIGS[name]
    dcfg = loaded.config.diffusion
    diffusion, model_fn = spaced(loaded.model, dcfg, "")
    betas = diffusion.betas.tolist()
    c = loaded.config.model.in_channels
    size = loaded.config.model.image_size
    out, calls = [], 0
    for lo in range(0, num, batch):
        idx = list(range(lo, min(lo + batch, num)))
        sched = getattr(diffusers, cls_name)(
            num_train_timesteps=dcfg.num_timesteps, trained_betas=betas,
            prediction_type="epsilon", thresholding=True, sample_max_value=1.0, **kwargs,
        )  # fmt: skip
        sched.set_timesteps(nfe)
        gens = per_sample_generators(seed, idx)
        x = torch.stack([torch.randn(c, size, size, generator=g) for g in gens]).to(device)
        x = x * sched.init_noise_sigma
        with torch.no_grad():
            for t in sched.timesteps:
                inp = sched.scale_model_input(x, t)
                tt = torch.full((len(idx),), int(t), dtype=torch.int64, device=device)
                eps = model_fn(inp, tt)[:, :c]
                calls += 1 if lo == 0 else 0
                x = sched.step(eps, t, x).prev_sample
        out.append(to_uint8(x.clamp(-1, 1)))
    return np.concatenate(out), calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="digits run directory")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--nfe", default="5,10,20")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    import diffusers

    loaded = load_model(args.checkpoint, device=args.device)
    extractor = extractor_for("digits", args.device)
    ref = reference("digits", "train", extractor)
    rows = []
    for name in args.configs.split(","):
        for nfe in [int(k) for k in args.nfe.split(",")]:
            fids, calls, secs = [], 0, 0.0
            for seed in [int(s) for s in args.seeds.split(",")]:
                start = time.perf_counter()
                images, calls = sample(loaded, name, nfe, args.num, seed, args.batch_size,
                                       args.device)  # fmt: skip
                secs += time.perf_counter() - start
                fids.append(round(score(images, extractor, ref)["fid"], 3))
            row = {"scheduler": name, "nfe": calls, "num_inference_steps": nfe,
                   "fid": round(statistics.fmean(fids), 4), "fid_per_seed": fids,
                   "fid_sd": round(statistics.stdev(fids), 3) if len(fids) > 1 else None,
                   "sample_seconds": round(secs / len(fids), 3)}  # fmt: skip
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    result = {
        **result_header("bench_diffusers", args.device),
        "diffusers": diffusers.__version__,
        "checkpoint": args.checkpoint,
        "num_samples": args.num,
        "load": os.getloadavg(),
        "rows": rows,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
