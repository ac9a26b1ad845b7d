#!/usr/bin/env bash
# One prepared GPU check (issue 11); prints ONE JSON object on stdout, logs go to stderr.
#
#   bash benchmarks/device_check.sh            # from the repository root
#   PYTHON=/path/to/python bash benchmarks/device_check.sh
#
# Without CUDA it prints {"cuda": false} and exits 0 at once (CI runs it that way).
# On a CUDA machine it finishes in about 8 minutes or less (every part has its own time
# limit; a part that fails or times out reports {"error": ...} and the rest still runs):
#   train_step     CIFAR-10 preset (52.5M UNet) at batch 128 through `iddpm train`:
#                  s/step and images/s in fp32, bf16, fp16, bf16 --channels-last and
#                  bf16 --compile --channels-last, read
#                  from the last metrics.jsonl window (warm-up and compilation excluded)
#   sampling       images/s of 100-step ancestral sampling (CIFAR-10 UNet, batch 256),
#                  eager and build.inference_model(compile=True)
#   exact_bpd      images/s of the exact bound of 16 images (T = 4000, timestep_batch 32)
#   torchrun       a one-process torchrun NCCL run of 20 steps (digits preset) with a
#                  checkpoint at 10; a resumed 10+10 run must equal it bitwise (and a
#                  second uninterrupted run is the control for GPU non-determinism)
#   fp16_loss_scale  a fp16 Trainer started at loss scale 2^40: steps skipped while the
#                  scaled gradients overflow, the scale halving each time, then training
#   memory         benchmarks/bench_memory.py: peak CUDA memory of a training step with
#                  and without --grad-checkpoint (CIFAR-10 and ImageNet-64, batch 128)
# Only `iddpm train` flags and library functions that exist since issue 11 are used.
# DEVICE_CHECK_DRY_RUN=1 runs the same driver on the CPU with the digits preset at small
# sizes (no compile, fp16 or memory parts): a check of the script itself, not of a GPU.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DRY="${DEVICE_CHECK_DRY_RUN:-0}"
if [ "$DRY" != 1 ] && ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /dev/nvidia0 ]; then
  echo '{"cuda": false}'
  exit 0
fi
if [ "$DRY" != 1 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo '{"cuda": false}'
  exit 0
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK="$(mktemp -d "${TMPDIR:-/tmp}/iddpm-device-check-XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
"$PY" - "$WORK" "$PY" "$DRY" <<'PYEOF'
import json, statistics, subprocess, sys, time
from pathlib import Path

import iddpm.cli._startup  # the command line's start-up (OpenMP, allocator) before torch

WORK, PY, DRY = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
T0 = time.time()
out = {"cuda": not DRY, "dry_run": DRY}
# the real check, and the dry run's CPU stand-ins
DEV, PRESET, BATCH, SHAPE = ("cpu", "digits", 16, (1, 8, 8)) if DRY else (
    "cuda", "cifar10", 128, (3, 32, 32))


def log(msg):
    print(f"[device_check {time.time() - T0:5.0f}s] {msg}", file=sys.stderr, flush=True)


def run(cmd, limit, **kw):
    """A command with a time limit; its stdout, or an exception that says what failed."""
    log(" ".join(map(str, cmd)))
    done = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=limit, **kw)
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"exit {done.returncode}: {' | '.join(tail)}")
    return done.stdout


def part(name, fn):
    start = time.time()
    try:
        out[name] = fn()
    except Exception as e:  # one failing part must not hide the others
        out[name] = {"error": f"{type(e).__name__}: {e}"[:400]}
    log(f"{name} done in {time.time() - start:.0f}s")


def device_info():
    import torch

    from iddpm.train.precision import resolve_precision

    info = {"torch": torch.__version__,
            "auto_precision": resolve_precision("auto", torch.device(DEV))}
    if DEV == "cuda":
        p = torch.cuda.get_device_properties(0)
        info |= {"name": p.name, "capability": list(torch.cuda.get_device_capability(0)),
                 "memory_gb": round(p.total_memory / 2**30, 1)}
    return info


def make_npz():
    import numpy as np

    rng = np.random.default_rng(0)
    c, h, w = SHAPE
    path = WORK / "synthetic.npz"
    np.savez(path, images=rng.integers(0, 256, size=(2048, h, w, c), dtype=np.uint8))
    return path


def train_cmd(run_dir, *flags):
    return [PY, "-m", "iddpm", "train", "--run-dir", run_dir, "--sample-every", "0", *flags]


def last_window(run_dir):
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    ips = rows[-1]["images_per_s"]
    return {"images_per_s": round(ips, 1), "s_per_step": round(BATCH / ips, 4)}


def train_steps(npz):
    res = {}
    variants = {"fp32": [], "bf16": [], "fp16": [], "bf16_channels_last": ["--channels-last"],
                "bf16_compile": ["--compile"]}
    if DRY:
        variants = {"fp32": [], "bf16": []}
    for name, extra in variants.items():
        precision = name.split("_")[0]
        steps, log_every = (40, 10) if "compile" in extra else (30, 10)
        run_dir = WORK / f"step_{name}"
        extra = extra + ["--channels-last"] if "compile" in extra else extra
        try:
            run(train_cmd(run_dir, "--preset", PRESET, "--data", npz, "--batch-size", BATCH,
                          "--precision", precision, "--steps", steps, "--log-every", log_every,
                          "--checkpoint-every", 10**6, *extra), 240 if extra else 90)
            res[name] = last_window(run_dir)
        except Exception as e:
            res[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
    base = res.get("fp32", {}).get("s_per_step")
    for row in res.values():
        if base and "s_per_step" in row:
            row["speedup_vs_fp32"] = round(base / row["s_per_step"], 2)
    return res


def cifar_model():
    import torch

    from iddpm.build import build_unet
    from iddpm.presets import get_preset

    cfg = get_preset(PRESET)
    torch.manual_seed(0)
    model = build_unet(cfg.model).to(DEV)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    return cfg, model


def timed(fn):
    import torch

    sync = torch.cuda.synchronize if DEV == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def sampling():
    import torch

    from iddpm.build import inference_model, spaced
    from iddpm.diffusion.samplers import ancestral

    cfg, model = cifar_model()
    res = {}
    n = 16 if DRY else 256
    for name, compile_ in (("eager", False), ("compiled", True))[: 1 if DRY else 2]:
        net = inference_model(model, compile=compile_, cache_dir=WORK / "inductor")
        diffusion, model_fn = spaced(net, cfg.diffusion, "100")
        gen = torch.Generator(DEV).manual_seed(0)

        def go():
            with torch.no_grad():
                ancestral(model_fn, diffusion, shape=(n, *SHAPE), generator=gen, device=DEV)

        first = timed(go)
        s = statistics.median(timed(go) for _ in range(2))
        res[name] = {"images_per_s": round(n / s, 1), "first_run_s": round(first, 1), "batch": n}
    return res


def exact_bpd():
    import torch

    from iddpm.build import inference_model, spaced
    from iddpm.diffusion.likelihood import bits_per_dim

    cfg, model = cifar_model()
    diffusion, model_fn = spaced(inference_model(model), cfg.diffusion, "")
    gen = torch.Generator(DEV).manual_seed(0)
    x0 = torch.randint(0, 256, (16, *SHAPE), device=DEV, generator=gen).float() / 127.5 - 1
    holder = {}
    s = timed(lambda: holder.setdefault("r", bits_per_dim(
        model_fn, diffusion, x0, timestep_batch=32, generator=gen)))
    return {"images_per_s": round(16 / s, 2), "images": 16, "T": diffusion.num_timesteps,
            "mean_bpd_random_weights": round(float(holder["r"].total_bpd.mean()), 4)}


def torchrun_resume():
    import torch

    common = ["--preset", "digits", "--batch-size", 64, "--log-every", 5, "--checkpoint-every", 10]
    tr = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", 1, "-m", "iddpm"]

    def train(run_dir, steps, *extra):
        cmd = tr + ["train", "--run-dir", run_dir, "--sample-every", 0, "--steps", steps]
        run(cmd + common + list(extra), 120)

    train(WORK / "tr_a", 20)
    train(WORK / "tr_b", 10)
    train(WORK / "tr_b", 20, "--resume")
    train(WORK / "tr_c", 20)

    def state(run_dir):
        s = torch.load(Path(run_dir) / "checkpoints" / "step_00000020.pt", map_location="cpu",
                       weights_only=False)
        return {k: s[k] for k in ("model", "ema", "optimizer")}

    def equal(a, b):
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
        if isinstance(a, torch.Tensor):
            return torch.equal(a, b)
        return a == b

    a, b, c = state(WORK / "tr_a"), state(WORK / "tr_b"), state(WORK / "tr_c")
    rows = [json.loads(x) for x in (WORK / "tr_a" / "metrics.jsonl").read_text().splitlines()]
    return {"steps": 20, "resume_bitwise": equal(a, b), "repeat_bitwise_control": equal(a, c),
            "final_loss": rows[-1].get("loss")}


def fp16_loss_scale():
    import torch

    from iddpm.build import build_diffusion, build_timestep_sampler, build_unet
    from iddpm.presets import get_preset
    from iddpm.train.trainer import Trainer

    cfg = get_preset("digits")
    cfg = cfg.replace(train=cfg.train.replace(precision="fp16", log_every=10**9))
    x0 = torch.rand(64, 1, 8, 8, device="cuda") * 2 - 1
    torch.manual_seed(0)
    trainer = Trainer(build_unet(cfg.model), build_diffusion(cfg.diffusion),
                      iter(lambda: {"x0": x0}, None), build_timestep_sampler(cfg.diffusion),
                      cfg, device="cuda")
    trainer.precision.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**40)
    scales, skipped = [], 0
    for _ in range(40):
        trainer.step()
        m = trainer.metrics.summary()
        skipped += int(m.get("skipped", 0))
        scales.append(trainer.precision.loss_scale)
    finite = all(bool(torch.isfinite(p).all()) for p in trainer.module.parameters())
    return {"init_scale": 2.0**40, "skipped_steps": skipped, "scale_after_each_step": scales[:25],
            "final_scale": scales[-1], "weights_finite": finite, "step": trainer.step_count}


def memory():
    return json.loads(run([PY, "benchmarks/bench_memory.py", "--device", "cuda", "--batch", 128,
                           "--steps", 3], 150).strip().splitlines()[-1])


part("device", device_info)
npz = make_npz()
part("train_step", lambda: train_steps(npz))
part("sampling", sampling)
part("exact_bpd", exact_bpd)
part("torchrun", torchrun_resume)
if not DRY:
    part("fp16_loss_scale", fp16_loss_scale)
    part("memory", memory)
out["wall_s"] = round(time.time() - T0, 1)
print(json.dumps(out))
PYEOF
