"""Named training recipes: the paper's CIFAR-10 and ImageNet 64 runs, and a CPU-sized one.

Each preset is a full `ExperimentConfig`; CLI flags override single fields on top of it.
The "-vlb" variants train L_vlb with importance-sampled timesteps (docs/paper.md P13), the
paper's best-likelihood setting.
"""

from __future__ import annotations

from iddpm.config import DiffusionConfig, ExperimentConfig, TrainConfig, UNetConfig


def _digits() -> ExperimentConfig:
    # Fits a 2-core laptop CPU: 755K parameters, 8×8 grayscale, ~19 steps/s at batch 64
    # on 2 threads (4.3M parameters with 64 channels and 2 blocks ran at ~5 steps/s).
    # T = 1000 keeps the full chain cheap to sample; EMA 0.999 suits runs of minutes.
    return ExperimentConfig(
        diffusion=DiffusionConfig(num_timesteps=1000),
        model=UNetConfig(
            image_size=8,
            in_channels=1,
            model_channels=32,
            num_res_blocks=1,
            attention_resolutions=(4,),
            channel_mult=(1, 2),
            num_heads=4,
            dropout=0.0,
        ),
        train=TrainConfig(
            data="digits",
            random_flip=False,  # digits are not mirror-symmetric
            batch_size=64,
            lr=2e-4,
            ema_rates=(0.999,),
            ema_warmup=True,  # minutes-long runs: keep the initial weights out of the average
            steps=6000,
            log_every=50,
            sample_every=1000,  # a grid of 50-step samples in RUN_DIR/samples
            checkpoint_every=1000,
            # held-out/training bits/dim every 1000 steps, digits-FID of 25-step ancestral
            # samples every 2000: ~5% of the training time together (benchmarks/
            # bench_train_eval.py)
            eval_every=1000,
            eval_images=200,
            fid_every=2000,
            fid_samples=256,
            fid_steps="25",
        ),
    )


def _cifar10() -> ExperimentConfig:
    # The paper's CIFAR-10 model (docs/paper.md, "The network"): 128 channels, 3 res blocks,
    # dropout 0.3, T = 4000 cosine, learned range, L_hybrid, lr 1e-4, batch 128, EMA 0.9999.
    return ExperimentConfig(
        diffusion=DiffusionConfig(num_timesteps=4000, schedule="cosine"),
        model=UNetConfig(image_size=32, dropout=0.3, channel_mult=(1, 2, 2, 2)),
        train=TrainConfig(
            data="cifar10:data/cifar-10-batches-py",
            random_flip=False,  # the reference's data loader never flips
            batch_size=128,
            lr=1e-4,
            ema_rates=(0.9999,),
            steps=500_000,
            sample_every=10_000,
            checkpoint_every=10_000,
            eval_every=10_000,  # held-out/training bits/dim; FID needs the fid extra: opt in
            eval_images=500,
        ),
    )


def _imagenet64() -> ExperimentConfig:
    # ImageNet 64: the CIFAR-10 recipe without dropout, channel multipliers (1, 2, 3, 4),
    # 1.5M steps. Data: the downsampled-ImageNet npz files (see README).
    return ExperimentConfig(
        diffusion=DiffusionConfig(num_timesteps=4000, schedule="cosine"),
        model=UNetConfig(image_size=64, dropout=0.0, channel_mult=(1, 2, 3, 4)),
        train=TrainConfig(
            data="data/imagenet64/train_data.npz",
            random_flip=False,  # the reference's data loader never flips
            batch_size=128,
            lr=1e-4,
            ema_rates=(0.9999,),
            steps=1_500_000,
            sample_every=10_000,
            checkpoint_every=10_000,
            eval_every=10_000,  # held-out/training bits/dim; FID needs the fid extra: opt in
            eval_images=500,
        ),
    )


def _vlb(cfg: ExperimentConfig) -> ExperimentConfig:
    return cfg.replace(
        diffusion=cfg.diffusion.replace(loss="vlb", timestep_sampler="importance"),
    )


_BASE = {"digits": _digits, "cifar10": _cifar10, "imagenet64": _imagenet64}
PRESETS: tuple[str, ...] = tuple(n for b in _BASE for n in (b, f"{b}-vlb"))


def get_preset(name: str) -> ExperimentConfig:
    """The named recipe as an `ExperimentConfig`; names: see `PRESETS`."""
    base = name.removesuffix("-vlb")
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    cfg = _BASE[base]()
    return _vlb(cfg) if name.endswith("-vlb") else cfg
