"""Factories from config to objects: the one place where config strings become enums and
concrete classes are wired together (docs/design.md §2)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from iddpm._io import load_tensors
from iddpm.checkpoint import FORMAT_VERSION, load_for_inference, resolve_checkpoint, slowest_ema
from iddpm.config import INIT_WEIGHTS, DiffusionConfig, ExperimentConfig, UNetConfig
from iddpm.diffusion import schedules
from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType, VarType
from iddpm.diffusion.respace import ModelAdapter, parse_steps, spaced_model
from iddpm.diffusion.timestep_sampler import LossSecondMomentSampler, UniformSampler
from iddpm.model.unet import UNet


def build_diffusion(cfg: DiffusionConfig) -> GaussianDiffusion:
    """The full T-step process of `cfg` (float64 tables)."""
    return GaussianDiffusion(
        schedules.get(cfg.schedule, cfg.num_timesteps),
        mean_type=MeanType(cfg.mean_type),
        var_type=VarType(cfg.var_type),
    )


def build_unet(cfg: UNetConfig) -> UNet:
    return UNet(cfg)


def build_timestep_sampler(cfg: DiffusionConfig) -> UniformSampler | LossSecondMomentSampler:
    if cfg.timestep_sampler == "importance":
        return LossSecondMomentSampler(cfg.num_timesteps)
    return UniformSampler(cfg.num_timesteps)


def kept_steps(cfg: DiffusionConfig, steps: str | None) -> list[int]:
    """The base steps a step spec keeps for this process (every spec form, including
    those that need the schedule, such as "logsnr50"). Raises one-line ValueErrors."""
    return parse_steps(
        steps or None, cfg.num_timesteps, alphas_cumprod=build_diffusion(cfg).alphas_cumprod
    )


def spaced(
    model: nn.Module, cfg: DiffusionConfig, steps: str | None = None
) -> tuple[GaussianDiffusion, ModelAdapter]:
    """The (possibly strided) process for `steps` and the model_fn that runs it.

    steps: a step spec ("250", "ddim50", "10,15,20"; None or "" = all T steps). The model
    sees the original step indices, rescaled as in training (docs/paper.md P14).
    """
    return spaced_model(model, build_diffusion(cfg), steps or None, cfg.rescale_timesteps)


@dataclass
class LoadedModel:
    """A trained model ready for sampling or evaluation; `use_ema`: its weights are the
    slowest EMA's (else the raw ones), which statistics cached for it depend on."""

    config: ExperimentConfig
    model: UNet
    checkpoint: Path
    use_ema: bool = True


def load_model(
    path: str | Path, use_ema: bool = True, device: torch.device | str = "cpu"
) -> LoadedModel:
    """Rebuild the UNet of a run directory or checkpoint file, in eval mode, on `device`."""
    ckpt_path = resolve_checkpoint(path)
    cfg, state = load_for_inference(ckpt_path, use_ema=use_ema)
    model = build_unet(cfg.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # torch lists every mismatch; the first one names the problem
        detail = " ".join(str(e).split())[:300]
        raise ValueError(
            f"checkpoint {ckpt_path} holds weights that do not fit its own config ({detail}); "
            "it is damaged or was edited: use another checkpoint of the run"
        ) from None
    model.to(device).eval()
    return LoadedModel(cfg, model, Path(ckpt_path), use_ema)


# ---- initial weights for a new run (fine-tuning) -----------------------------------------


@dataclass(frozen=True)
class InitWeights:
    """Where a new run's initial weights came from: the checkpoint file and which set
    ("ema 0.9999", "raw", or "raw (no EMA stored)")."""

    checkpoint: Path
    weights: str


def _read_source(source: str | Path) -> tuple[Path, dict]:
    """The checkpoint dict at `source` (run directory or file), read with weights_only."""
    path = resolve_checkpoint(source)
    fix = "pass a run directory or a .pt written by `iddpm train` or `iddpm convert`"
    state = load_tensors(path, "--init-from", fix)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        plain = isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
        hint = "convert a reference improved-diffusion file with `iddpm convert` first; "
        hint = hint if plain and state else ""
        raise ValueError(f"--init-from {path} is not an iddpm checkpoint; {hint}{fix}")
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"--init-from {path} has format_version {state.get('format_version')!r} but this "
            f"iddpm reads version {FORMAT_VERSION}; use the iddpm release that wrote it"
        )
    return path, state


def _chosen_weights(state: dict, weights: str, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The raw state dict, with the slowest EMA's parameters laid over it for "ema"."""
    chosen = dict(state["model"])
    if weights == "raw":
        return chosen, "raw"
    ema = slowest_ema(state, path)
    if ema is None:  # e.g. a converted reference checkpoint: its one set is the model
        return chosen, "raw (no EMA stored)"
    chosen.update(ema[1])
    return chosen, f"ema {ema[0]}"


def _misfit(model: nn.Module, weights: dict[str, torch.Tensor]) -> list[str]:
    """What keeps `weights` from loading into `model`: counts and the first few names."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items() if isinstance(v, torch.Tensor)}
    groups = {
        "missing": sorted(set(want) - set(got)),
        "unexpected": sorted(set(got) - set(want)),
        "of another shape": [
            f"{k} {list(got[k])} there, {list(want[k])} here"
            for k in sorted(set(want) & set(got))
            if want[k] != got[k]
        ],
    }
    return [
        f"{len(names)} {kind} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        for kind, names in groups.items()
        if names
    ]


def load_init_weights(model: nn.Module, source: str | Path, weights: str = "ema") -> InitWeights:
    """Load the weights of another run or checkpoint into `model`, the start of a new run.

    source: a run directory (its latest checkpoint) or a checkpoint file, including a run
    made by `iddpm convert`; weights: "ema" (the slowest EMA's parameters, buffers from the
    raw model, as sampling uses; a checkpoint without EMA gives its raw weights) or "raw".
    Every tensor must match the model's names and shapes; else a one-line ValueError names
    the missing, unexpected and mis-shaped tensors (first few and counts) and the fix.
    """
    if weights not in INIT_WEIGHTS:
        raise ValueError(f"unknown init weights {weights!r}; choose one of: ema, raw")
    path, state = _read_source(source)
    chosen, which = _chosen_weights(state, weights, path)
    problems = _misfit(model, chosen)
    if problems:
        raise ValueError(
            f"--init-from {path} does not fit this model: {'; '.join(problems)}; give the new "
            "run the model settings of the source's config.json or drop --init-from"
        )
    model.load_state_dict(chosen)
    return InitWeights(path, which)


def use_inductor_cache(folder: str | Path) -> None:
    """Keep torch.compile's kernels in `folder` (a run's cache/inductor), so that a later
    job on the same run (a resume, another sampling job) reuses them instead of compiling
    again. Process-wide (TORCHINDUCTOR_CACHE_DIR): call it before the first compiled call.
    Nothing is created here: inductor makes the folder when it first compiles, so a job
    that fails before that leaves no trace in the run."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(folder).resolve())


def inference_model(
    model: nn.Module, compile: bool = False, cache_dir: str | Path | None = None
) -> nn.Module:
    """`model` in eval mode for sampling or bits/dim, compiled with torch.compile when
    `compile` (the same call signature; outputs equal to float32 rounding).

    Compilation happens on the first call of each input shape (static shapes: the last,
    smaller batch of a job compiles once more). `cache_dir` (a run's `cache/`) receives
    inductor's caches, so a second job on the same model reuses the compiled kernels;
    it is set process-wide (TORCHINDUCTOR_CACHE_DIR) and must be chosen before the first
    compiled call. Compiling pays only for long jobs: see benchmarks/bench_inference.py.
    """
    model.eval()
    if not compile:
        return model
    if cache_dir is not None:
        use_inductor_cache(cache_dir)
    return torch.compile(model, dynamic=False)
