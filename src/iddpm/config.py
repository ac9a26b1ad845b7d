"""Frozen configuration dataclasses with the paper's defaults (docs/paper.md, "The network").

Strings for choices live here and at the CLI; `build.py` turns them into enums. Every
dataclass validates itself in `__post_init__` with one-line `ValueError`s that name the
problem and the fix, and round-trips losslessly through `to_dict`/`from_dict` (JSON-safe).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

SCHEDULES = ("linear", "cosine")
MEAN_TYPES = ("epsilon", "x0", "prev-mean")
VAR_TYPES = ("learned-range", "learned", "fixed-small", "fixed-large")
LOSSES = ("hybrid", "simple", "vlb")
TIMESTEP_SAMPLERS = ("uniform", "importance")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MC_METHODS = ("log-stratified", "stratified", "importance")
# The reverse variance of the bound: the model's own, Analytic-DPM's, or a fixed one.
EVAL_SIGMAS = ("model", "analytic", "fixed-small", "fixed-large")
INIT_WEIGHTS = ("ema", "raw")
LOGGERS = ("jsonl", "tensorboard")
SPLITS = ("train", "test")  # the data splits every data source has

T = TypeVar("T")


def option(
    default: Any, help: str, *, choices: tuple[str, ...] | None = None, flag: str | None = None
) -> Any:
    """A config field that is also a command-line flag: its default, its help, its choices
    (checked by the config's own validation too) and the flag's name where it is not the
    field's (`--diffusion-steps` for num_timesteps). `cli/options.py` reads these."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    if flag is not None:
        metadata["flag"] = flag
    return field(default=default, metadata=metadata)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


class _Serializable:
    """Lossless dict round trip; tuples come back as tuples, unknown keys are rejected."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, _Serializable) else _jsonable(v)
        return out

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} field(s) {', '.join(unknown)}; "
                f"known fields: {', '.join(fields)}"
            )
        kwargs: dict[str, Any] = {}
        for name, value in d.items():
            default = getattr(cls, name, None) if name in fields else None
            sub = _SUBCONFIGS.get((cls.__name__, name))
            if sub is not None:
                kwargs[name] = sub.from_dict(value)
            elif isinstance(value, list) or isinstance(default, tuple):
                kwargs[name] = tuple(value) if value is not None else None
            else:
                kwargs[name] = value
        return cls(**kwargs)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


@dataclass(frozen=True)
class DiffusionConfig(_Serializable):
    """The diffusion process and objective (docs/paper.md P4–P13).

    `rescale_timesteps`: the model sees t scaled to [0, 1000) whatever T is (the authors'
    training default), so a model trained with T = 4000 and one with T = 1000 see the
    same range.
    """

    num_timesteps: int = option(
        4000, "diffusion steps T (the paper: 1000 or 4000)", flag="diffusion-steps"
    )
    schedule: str = option("cosine", "noise schedule (docs/paper.md P4/P5)", choices=SCHEDULES)
    mean_type: str = option("epsilon", "what the network predicts", choices=MEAN_TYPES)
    var_type: str = option(
        "learned-range",
        "reverse-process variance: learned range (the paper), or fixed beta-tilde/beta",
        choices=VAR_TYPES,
        flag="sigma",
    )
    loss: str = option(
        "hybrid",
        "objective: hybrid = L_simple + 0.001 L_vlb (the paper), simple, or vlb",
        choices=LOSSES,
    )
    vlb_weight: float = option(0.001, "lambda of the hybrid loss")
    timestep_sampler: str = option(
        "uniform",
        "timestep sampling: uniform, or importance (p_t ~ sqrt(E[L_t^2]))",
        choices=TIMESTEP_SAMPLERS,
    )
    rescale_timesteps: bool = option(True, "feed the network t scaled to [0, 1000)")

    def __post_init__(self) -> None:
        if not isinstance(self.num_timesteps, int) or self.num_timesteps < 1:
            raise ValueError(
                f"num_timesteps must be an integer >= 1, got {self.num_timesteps!r}; "
                "the paper uses 1000 or 4000"
            )
        _choice("noise schedule", self.schedule, SCHEDULES)
        _choice("mean type", self.mean_type, MEAN_TYPES)
        _choice("variance type", self.var_type, VAR_TYPES)
        _choice("loss", self.loss, LOSSES)
        _choice("timestep sampler", self.timestep_sampler, TIMESTEP_SAMPLERS)
        _positive("vlb_weight", self.vlb_weight)
        if self.loss == "simple" and self.learn_sigma:
            # L_simple has no term that depends on Σ_θ (P9): its variance channels would
            # never train and sampling would silently use v = 0.
            raise ValueError(
                f"loss 'simple' cannot train the learned variance ({self.var_type!r}); use "
                "--sigma fixed-large or --sigma fixed-small with it, or --loss hybrid"
            )

    @property
    def learn_sigma(self) -> bool:
        return self.var_type in ("learned", "learned-range")

    def output_channels(self, image_channels: int) -> int:
        """Channels the network outputs: ε (or x0, or the mean) per image channel, plus as
        many variance channels when Σ is learned. The one place this rule lives."""
        return image_channels * (2 if self.learn_sigma else 1)


@dataclass(frozen=True)
class UNetConfig(_Serializable):
    """The paper's UNet (docs/paper.md, "The network"). Defaults: the CIFAR-10 model.

    `attention_resolutions` are feature-map sizes in pixels (16 and 8 at 32×32), not
    downsampling rates. `out_channels`: None means derived — inside an ExperimentConfig
    from the variance type (`DiffusionConfig.output_channels`: 2·in_channels when Σ is
    learned), on its own in_channels; an explicit value must agree with that rule.
    """

    image_size: int = option(32, "image resolution in pixels")
    in_channels: int = option(3, "image channels (1 grayscale, 3 RGB)")
    model_channels: int = option(128, "base channel count of the UNet")
    out_channels: int | None = option(
        None,
        "network output channels (default: derived, 2x image channels when the variance "
        "is learned)",
    )
    num_res_blocks: int = option(3, "residual blocks per resolution")
    attention_resolutions: tuple[int, ...] = option(
        (16, 8), "feature-map sizes with self-attention, e.g. 16,8"
    )
    channel_mult: tuple[int, ...] = option(
        (1, 2, 2, 2), "channel multiplier per resolution, e.g. 1,2,2,2"
    )
    num_heads: int = option(4, "attention heads")
    dropout: float = option(0.0, "dropout in residual blocks")
    use_scale_shift_norm: bool = option(True, "apply the timestep embedding as scale and shift")
    num_classes: int | None = option(None, "classes for class-conditional models")
    conv_resample: bool = option(True, "convolutional up/down-sampling")
    num_groups: int = option(32, "GroupNorm groups")

    def __post_init__(self) -> None:
        for name in ("image_size", "in_channels", "model_channels"):
            _positive(name, getattr(self, name))
        if self.out_channels is not None:
            _positive("out_channels", self.out_channels)
        _positive("num_res_blocks", self.num_res_blocks)
        _positive("num_heads", self.num_heads)
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(
                f"channel_mult must be a non-empty list of positive integers, "
                f"got {self.channel_mult!r}"
            )
        down = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % down:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by {down} "
                f"({len(self.channel_mult)} resolution levels); use fewer channel_mult "
                "entries or a larger image"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {self.num_classes!r}")
        widths = {self.model_channels * m for m in self.channel_mult}
        bad = sorted(w for w in widths if w % self.num_groups)
        if bad:
            raise ValueError(
                f"channel widths {bad} are not divisible by num_groups={self.num_groups}; "
                "choose model_channels as a multiple of num_groups"
            )


@dataclass(frozen=True)
class TrainConfig(_Serializable):
    """Optimisation and run bookkeeping. `batch_size` is global (all ranks together);
    `microbatch` is the per-rank micro-batch (0: the whole per-rank batch at once).
    `ema_warmup` caps the EMA rate at (1 + k)/(10 + k) at step k (off in the paper's
    recipes; on for short CPU runs, see train/ema.py). `init_from` (a run directory or
    checkpoint file; "" = random initial weights) starts a new run from those weights,
    `init_weights` says which: the slowest EMA's or the raw ones (`build.load_init_weights`);
    the optimizer starts fresh and the EMA starts from the loaded weights.

    Periodic evaluation (train/evaluate.py; 0 = off): every `eval_every` steps the
    Monte-Carlo bits/dim (`eval_timesteps` log-stratified steps per image) of
    `eval_images` held-out images (`eval_data`, "" = the test split of `data`) and of as
    many training images, with the slowest EMA and the same noise every time; every
    `fid_every` steps the FID of `fid_samples` samples of `fid_sampler` at `fid_steps`.
    `overfit_patience`: evaluations in a row with a rising held-out bound (and a falling
    training one) before the overfitting warning; `keep_best`: keep the checkpoint with
    the best held-out bound as checkpoints/best.pt; `log`: "tensorboard" also writes
    TensorBoard events to RUN/tensorboard (the optional extra `iddpm[tensorboard]`).

    `precision` "auto" (the default) trains in bf16 autocast where the device runs bf16
    natively and in fp32 elsewhere (rule: `iddpm.train.precision.native_bf16`); fp16 with
    loss scaling is opt-in. `lr_anneal_steps` N > 0 decays the lr linearly to 0 over N
    steps (as the authors' `--lr_anneal_steps`). `grad_checkpoint` recomputes each UNet
    block's activations in the backward pass (less memory, ~a third more compute)."""

    data: str = option("digits", "data: digits | DIR | FILE.npz | cifar10:DIR")
    class_cond: bool = option(False, "train a class-conditional model (labels from the data)")
    random_flip: bool = option(True, "random horizontal flips")
    batch_size: int = option(128, "global batch size (all ranks together)")
    microbatch: int = option(0, "per-rank micro-batch (0: no split)")
    lr: float = option(1e-4, "AdamW learning rate")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_steps: int = option(0, "linear learning-rate warm-up steps")
    ema_rates: tuple[float, ...] = option((0.9999,), "EMA rates, e.g. 0.9999 or 0.999,0.9999")
    ema_warmup: bool = option(False, "cap the EMA rate at (1+k)/(10+k) at step k (for short runs)")
    grad_clip: float = option(0.0, "clip the gradient norm to this (0: off)")
    lr_anneal_steps: int = option(0, "decay the learning rate linearly to 0 over N steps (0: off)")
    precision: str = option(
        "auto",
        "auto (bf16 autocast where the hardware runs bf16 natively: CUDA >= 8.0, CPUs with "
        "AVX512-BF16/AMX; else fp32), fp32, bf16, or fp16 with loss scaling (GPU)",
        choices=PRECISIONS,
    )
    channels_last: bool = option(False, "channels_last memory format")
    compile: bool = option(False, "torch.compile the model (slow to start)")
    grad_checkpoint: bool = option(
        False,
        "recompute each UNet block's activations in the backward pass (less memory, about "
        "a third more compute)",
    )
    steps: int = option(500_000, "training steps")
    log_every: int = option(100, "steps between metric lines")
    sample_every: int = option(0, "steps between sample grids (0: off)")
    checkpoint_every: int = option(10_000, "steps between checkpoints")
    keep_checkpoints: int = option(3, "checkpoints to keep")
    seed: int = option(0, "random seed")
    init_from: str = option(
        "",
        "fine-tune: start from the weights of this run directory or checkpoint (also a converted "
        "reference checkpoint); fresh optimizer",
    )
    init_weights: str = option(
        "ema",
        "which weights --init-from takes: the slowest EMA, or the raw weights",
        choices=INIT_WEIGHTS,
    )
    eval_every: int = option(
        0,
        "steps between evaluations of the held-out and training bits/dim (Monte-Carlo, EMA "
        "weights, the same noise each time; 0: off)",
    )
    eval_images: int = option(
        256, "images of the held-out set, and of the training subset, per evaluation"
    )
    eval_timesteps: int = option(16, "log-stratified timesteps per image of the Monte-Carlo bound")
    eval_data: str = option("", "held-out data SPEC (default: the test split of --data)")
    fid_every: int = option(0, "steps between FIDs of samples during training (0: off)")
    fid_samples: int = option(256, "samples per FID during training")
    fid_sampler: str = option(
        "ancestral", "sampler of the FID samples during training (any registered sampler)"
    )
    fid_steps: str = option("25", "step spec of the FID samples during training, e.g. 25 or ddim50")
    overfit_patience: int = option(
        3,
        "evaluations in a row with a rising held-out bound (training bound falling) before the "
        "overfitting warning",
    )
    keep_best: bool = option(
        False, "keep the checkpoint with the best held-out bound as checkpoints/best.pt"
    )
    log: str = option(
        "jsonl",
        "also log to TensorBoard (RUN/tensorboard; pip install 'iddpm[tensorboard]')",
        choices=LOGGERS,
    )

    def __post_init__(self) -> None:
        _positive("batch_size", self.batch_size)
        _positive("microbatch", self.microbatch, allow_zero=True)
        if self.microbatch and self.batch_size % self.microbatch:
            raise ValueError(
                f"--batch-size {self.batch_size} is not divisible by --microbatch "
                f"{self.microbatch}; use a divisor of the batch size"
            )
        _positive("lr", self.lr)
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        _positive("warmup_steps", self.warmup_steps, allow_zero=True)
        _positive("lr_anneal_steps", self.lr_anneal_steps, allow_zero=True)
        _positive("grad_clip", self.grad_clip, allow_zero=True)
        if not self.ema_rates or any(not 0.0 <= r < 1.0 for r in self.ema_rates):
            raise ValueError(f"ema_rates must be values in [0, 1), got {self.ema_rates!r}")
        _choice("precision", self.precision, PRECISIONS)
        _positive("steps", self.steps, allow_zero=True)
        _positive("log_every", self.log_every)
        _positive("sample_every", self.sample_every, allow_zero=True)
        _positive("checkpoint_every", self.checkpoint_every)
        _positive("keep_checkpoints", self.keep_checkpoints)
        _choice("init weights", self.init_weights, INIT_WEIGHTS)
        self._check_evaluation()

    def _check_evaluation(self) -> None:
        _positive("eval_every", self.eval_every, allow_zero=True)
        _positive("eval_images", self.eval_images)
        _positive("fid_every", self.fid_every, allow_zero=True)
        _positive("overfit_patience", self.overfit_patience)
        _choice("logger (--log)", self.log, LOGGERS)
        if self.eval_timesteps < 2:
            raise ValueError(
                f"eval_timesteps must be >= 2 (its standard error needs two), got "
                f"{self.eval_timesteps!r}"
            )
        if self.fid_samples < 2:
            raise ValueError(f"fid_samples must be >= 2 for a covariance, got {self.fid_samples!r}")
        if self.keep_best and not self.eval_every:
            raise ValueError(
                "--keep-best keeps the checkpoint with the best held-out bound; turn the "
                "evaluation on with --eval-every N"
            )


@dataclass(frozen=True)
class ExperimentConfig(_Serializable):
    """Everything a run needs; stored as `config.json` and inside every checkpoint."""

    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    model: UNetConfig = field(default_factory=UNetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        want = self.diffusion.output_channels(self.model.in_channels)
        if self.model.out_channels is None:  # derived (frozen: set once, here)
            object.__setattr__(self, "model", self.model.replace(out_channels=want))
        elif self.model.out_channels != want:
            raise ValueError(
                f"model out_channels {self.model.out_channels} does not match variance type "
                f"{self.diffusion.var_type!r} with {self.model.in_channels} image channels; "
                f"use out_channels={want} (or leave it out: it is derived)"
            )

        if self.train.class_cond and self.model.num_classes is None:
            raise ValueError(
                "class_cond is on but the model has no classes; pass --num-classes N "
                "(the number of classes in the data)"
            )
        if self.model.num_classes is not None and not self.train.class_cond:
            raise ValueError(
                f"the model has num_classes={self.model.num_classes} but class_cond is off; "
                "pass --class-cond (labels come from the data) or drop --num-classes"
            )

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A copy with some sections replaced; a derived out_channels is derived again
        (so `cfg.replace(diffusion=cfg.diffusion.replace(var_type=...))` just works)."""
        model = changes.get("model", self.model)
        if model.out_channels == self.diffusion.output_channels(self.model.in_channels):
            changes["model"] = model.replace(out_channels=None)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        # out_channels is derived, so it is not stored: changing the variance type or the
        # image channels of a stored config re-derives it. (Files that store it still load.)
        d = super().to_dict()
        d["model"].pop("out_channels")
        return d


@dataclass(frozen=True)
class SampleConfig(_Serializable):
    """How to draw samples. `steps` is a step spec ("250", "ddim50", "10,15,20", or "" for
    all T steps); `sampler` names an entry of the sampler registry
    (`iddpm.diffusion.registry`) and `sampler_options` holds its options by name (checked
    against the entry when sampling starts). Sample i depends only on (seed, i).
    `use_ema`: sample with the slowest EMA's weights (else the raw weights).

    Config files written before the registry stored `ddim` and `eta`; they still load
    (`ddim: true` becomes sampler "ddim" with that eta)."""

    num: int = 64
    steps: str = ""
    sampler: str = "ancestral"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    clip_denoised: bool = True
    use_ema: bool = True
    batch_size: int = 64
    seed: int = 0
    class_label: int | None = None

    def __post_init__(self) -> None:
        _positive("num", self.num)
        _positive("batch_size", self.batch_size)
        if not isinstance(self.sampler, str) or not self.sampler:
            raise ValueError(f"sampler must be a registered name, got {self.sampler!r}")
        if not isinstance(self.sampler_options, dict):
            raise ValueError(
                f"sampler_options must be a mapping of option names to values, "
                f"got {self.sampler_options!r}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SampleConfig:
        d = dict(d)
        if "ddim" in d or "eta" in d:  # the pre-registry layout
            ddim, eta = bool(d.pop("ddim", False)), d.pop("eta", 0.0)
            if ddim:
                d.setdefault("sampler", "ddim")
                d.setdefault("sampler_options", {"eta": eta})
        return super().from_dict(d)


@dataclass(frozen=True)
class EvalConfig(_Serializable):
    """Bits/dim evaluation. `data`: a data SPEC, or "" for the data the model trained on;
    `timestep_batch`: timesteps evaluated per network call for each image; `mc_timesteps`
    > 0 switches to the unbiased Monte-Carlo estimate of the bound, drawn with `mc_method`
    (see diffusion/likelihood_mc.py); `use_ema`: evaluate the slowest EMA's weights;
    `sigma`: the reverse variance of the bound (EVAL_SIGMAS: "model" is the model's own,
    "analytic" Analytic-DPM's from its ε statistics, or β̃ / β for any model)."""

    data: str = ""
    split: str = "test"
    num_images: int = 0
    steps: str = ""
    batch_size: int = 64
    timestep_batch: int = 16
    mc_timesteps: int = 0
    mc_method: str = "log-stratified"
    use_ema: bool = True
    seed: int = 0
    sigma: str = "model"

    def __post_init__(self) -> None:
        _choice("split", self.split, SPLITS)
        _choice("reverse variance (--sigma)", self.sigma, EVAL_SIGMAS)
        _choice("Monte-Carlo method", self.mc_method, MC_METHODS)
        _positive("num_images", self.num_images, allow_zero=True)
        _positive("batch_size", self.batch_size)
        _positive("timestep_batch", self.timestep_batch)
        _positive("mc_timesteps", self.mc_timesteps, allow_zero=True)


_SUBCONFIGS: dict[tuple[str, str], type[_Serializable]] = {
    ("ExperimentConfig", "diffusion"): DiffusionConfig,
    ("ExperimentConfig", "model"): UNetConfig,
    ("ExperimentConfig", "train"): TrainConfig,
}


def differences(a: ExperimentConfig, b: ExperimentConfig) -> list[tuple[str, str, Any, Any]]:
    """The fields where two experiment configs disagree, as (section, field, a's value,
    b's value) in declaration order; [] when they are equal. Values are JSON-safe (tuples
    as lists), as `to_dict` gives them."""
    da, db = a.to_dict(), b.to_dict()
    return [
        (section, name, value, db[section].get(name))
        for section, fields in da.items()
        for name, value in fields.items()
        if value != db[section].get(name)
    ]
