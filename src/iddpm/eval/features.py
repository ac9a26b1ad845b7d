"""Feature extractors for FID (the `FeatureExtractor` protocol of `iddpm.eval.fid`).

- `DigitsFeatureExtractor`: a small CNN trained on the bundled 8×8 digits' training split
  (weights ship with the package, `digits_classifier.safetensors`; regenerate them with
  `scripts/make_digits_classifier.py`). Features are its penultimate layer (64-d, before
  the ReLU). Its FID is called "digits-fid" and is NOT comparable with Inception FID or with
  any published number; it ranks models on the bundled data offline, in milliseconds. Its
  `predict_proba` gives the "classifier confidence" metrics of `classifier_confidence`.
- `InceptionFeatureExtractor`: the 2048-d pool features of the TensorFlow-ported
  Inception-v3 that published FIDs use, through torch-fidelity (`pip install 'iddpm[fid]'`,
  which needs a torchvision built for the installed torch). Nothing is downloaded: the
  weights file must already be in torch.hub's checkpoint folder (`inception_weights_path`).

This module never imports `iddpm.data`: the training function takes arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DIGITS_WEIGHTS = Path(__file__).with_name("digits_classifier.safetensors")
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
EXTRACTORS = ("digits", "inception")
SPATIAL_CHANNELS = 8  # digits sFID: 8 of conv3's 64 maps × 4×4 positions = 128 dimensions
# Inception sFID: the first 7 maps of Mixed_6e (17×17 each, 2023 dimensions), the layer
# and width of the ADM evaluator's "mixed_6/conv" spatial features.
INCEPTION_SPATIAL_CHANNELS = 7


@dataclass(frozen=True)
class Extracted:
    """What one pass of an extractor gives for a batch: pool features [N, dim] (FID,
    precision/recall, KID), spatial features [N, spatial_dim] (sFID) and class logits
    [N, num_classes] (Inception Score); float64 numpy arrays."""

    pool: np.ndarray
    spatial: np.ndarray
    logits: np.ndarray


class DigitsClassifier(nn.Module):
    """CNN for [N, 1, 8, 8] float inputs in [−1, 1]: 2×(conv 3×3, ReLU) → pool → conv 3×3,
    ReLU → pool → linear 256→64 (the features) → ReLU → linear 64→10 (logits)."""

    feature_dim = 64
    num_classes = 10

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 2 * 2, self.feature_dim)
        self.fc2 = nn.Linear(self.feature_dim, self.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate pre-activations [N, 64]: unbounded, so their covariance has full rank."""
        return self.all_features(x)[0]

    def all_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pass: penultimate features [N, 64], the spatial features [N, 128] (the first
        SPATIAL_CHANNELS maps of conv3 before its ReLU, 4×4 each, flattened: where strokes
        are, as the sFID of Nash et al. 2021 keeps Inception's mixed_6 maps) and logits."""
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)  # [N, 32, 4, 4]
        c3 = self.conv3(h)  # [N, 64, 4, 4]
        spatial = c3[:, :SPATIAL_CHANNELS].flatten(1)
        feats = self.fc1(F.max_pool2d(F.relu(c3), 2).flatten(1))  # [N, 64, 2, 2] → [N, 64]
        return feats, spatial, self.fc2(F.relu(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, 10]."""
        return self.fc2(F.relu(self.features(x)))


def digits_to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 8, 8, 1] → float32 [N, 1, 8, 8] in [−1, 1] (the model's x0 mapping)."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        kind = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"digits images must be a uint8 numpy array [N, 8, 8, 1], got {kind}")
    if images.ndim != 4 or images.shape[1:] != (8, 8, 1):
        raise ValueError(
            f"the digits extractor takes uint8 [N, 8, 8, 1] images, got shape {images.shape}; "
            "use the inception extractor for other image sizes"
        )
    return _tensor_nchw(images).to(torch.float32) / 127.5 - 1.0


def _tensor_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC array → NCHW tensor view; a read-only array (a memory-mapped prepared
    data set) is copied first, as torch refuses to wrap it without a warning."""
    if not images.flags.writeable:
        images = np.array(images)
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to one pixel (zero = background fill), a cheap augmentation
    that makes the features tolerate the small misplacements of generated digits."""
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    offset = torch.randint(0, 9, (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for k in range(9):
        dy, dx = divmod(k, 3)
        sel = offset == k
        out[sel] = padded[sel, :, dy : dy + 8, dx : dx + 8]
    return out


def train_digits_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 2e-3,
) -> DigitsClassifier:
    """Train `DigitsClassifier` with Adam and cross-entropy, deterministically on the CPU.

    images: uint8 [N, 8, 8, 1]; labels: int [N] in 0..9. Initialisation, shuffling and the
    ±1-pixel shifts all come from `seed`; the global RNG and thread count are restored.
    One-cycle learning-rate schedule peaking at `lr`.
    """
    x, y = digits_to_input(images), torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if y.shape != (x.shape[0],) or y.min() < 0 or y.max() >= DigitsClassifier.num_classes:
        raise ValueError(f"labels must be [N] ints in 0..9 for N={x.shape[0]} images")
    threads = torch.get_num_threads()
    # One thread: the weights then do not depend on the machine's thread count, and this
    # tiny network trains faster without threading overhead (seconds, not minutes).
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # nn layers draw their initial weights from the global RNG
            model = DigitsClassifier()
            return _fit(model, x, y, torch.Generator().manual_seed(seed), epochs, batch_size, lr)
    finally:
        torch.set_num_threads(threads)


def _fit(
    model: DigitsClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    epochs: int,
    batch_size: int,
    lr: float,
) -> DigitsClassifier:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = -(-x.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for idx in order.split(batch_size):
            loss = F.cross_entropy(model(_shift(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def save_digits_classifier(
    model: DigitsClassifier, path: str | Path, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write the weights as float32 safetensors with string metadata; returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=dict(metadata or {}))
    return path


def load_digits_classifier(path: str | Path = DIGITS_WEIGHTS) -> DigitsClassifier:
    """The classifier from a safetensors file (no pickle), in eval mode on the CPU."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"digits classifier weights {path} are missing; regenerate them with "
            "`python scripts/make_digits_classifier.py`"
        )
    model = DigitsClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


class DigitsFeatureExtractor:
    """64-d penultimate features of the bundled digits classifier; FID labelled "digits-fid".

    Call on uint8 [N, 8, 8, 1] → float64 [N, 64]. Not comparable with Inception FID.
    """

    name = "digits-fid"
    dim = DigitsClassifier.feature_dim
    spatial_dim = SPATIAL_CHANNELS * 4 * 4
    num_classes = DigitsClassifier.num_classes
    comparable_to_inception = False

    def __init__(
        self,
        weights_path: str | Path = DIGITS_WEIGHTS,
        device: str | torch.device = "cpu",
        batch_size: int = 4096,
    ) -> None:
        self.device = torch.device(device)
        self.model = load_digits_classifier(weights_path).to(self.device)
        self.batch_size = batch_size

    @torch.no_grad()
    def _run(self, images: np.ndarray, head: bool) -> np.ndarray:
        x = digits_to_input(images)
        outs = []
        for chunk in x.split(self.batch_size):
            chunk = chunk.to(self.device)
            out = self.model(chunk).softmax(-1) if head else self.model.features(chunk)
            outs.append(out.double().cpu())
        width = DigitsClassifier.num_classes if head else self.dim
        return torch.cat(outs).numpy() if outs else np.zeros((0, width))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features float64 [N, 64] of uint8 images [N, 8, 8, 1]."""
        return self._run(images, head=False)

    @torch.no_grad()
    def extract(self, images: np.ndarray) -> Extracted:
        """Pool, spatial and logit features of uint8 images [N, 8, 8, 1] in one pass."""
        x = digits_to_input(images)
        parts = [self.model.all_features(c.to(self.device)) for c in x.split(self.batch_size)]
        widths = (self.dim, self.spatial_dim, self.num_classes)
        return Extracted(
            *(
                torch.cat([p[k] for p in parts]).double().cpu().numpy()
                if parts
                else np.zeros((0, w))
                for k, w in enumerate(widths)
            )
        )

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities float64 [N, 10] of uint8 images [N, 8, 8, 1]."""
        return self._run(images, head=True)


def classifier_confidence(probs: np.ndarray, threshold: float = 0.9) -> dict[str, float]:
    """Summaries of class probabilities [N, K] of generated samples.

    confident_fraction: share with max p ≥ threshold (recognisable samples);
    mean_max_prob: mean of max p; class_entropy_bits: entropy of the predicted-class histogram
    (log2 K when every class is equally represented); classifier_score: exp E_x KL(p(y|x) ‖
    p(y)), the Inception-Score formula on this classifier (between 1 and K; not comparable
    with Inception Score).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or not np.allclose(p.sum(axis=1), 1.0, atol=1e-5):
        raise ValueError(f"probs must be [N, K] rows summing to 1 with N >= 1, got {p.shape}")
    top = p.max(axis=1)
    hist = np.bincount(p.argmax(axis=1), minlength=p.shape[1]) / p.shape[0]
    marginal = p.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(p > 0, p * (np.log(p) - np.log(marginal)), 0.0).sum(axis=1)
        ent = -np.where(hist > 0, hist * np.log2(hist), 0.0).sum()
    return {
        "confident_fraction": float((top >= threshold).mean()),
        "mean_max_prob": float(top.mean()),
        "class_entropy_bits": float(ent),
        "classifier_score": float(np.exp(kl.mean())),
    }


def inception_weights_path() -> Path:
    """Where torch-fidelity looks for its Inception-v3 weights: torch.hub's checkpoint folder
    ($TORCH_HOME/hub/checkpoints, by default ~/.cache/torch/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[-1]


def _import_torch_fidelity():
    try:
        import torch_fidelity
    except ModuleNotFoundError as err:
        if err.name not in (None, "torch_fidelity"):  # a dependency of it is missing
            raise ImportError(
                f"torch-fidelity is installed but cannot import {err.name}; install the "
                f"{err.name} build made for torch {torch.__version__} (for CPU wheels: "
                f"--index-url https://download.pytorch.org/whl/cpu)"
            ) from None
        raise ImportError(
            "Inception FID needs torch-fidelity and a torchvision matching torch "
            f"{torch.__version__}: pip install 'iddpm[fid]' (or use --features digits)"
        ) from None
    except Exception as err:  # e.g. a torchvision built for another torch fails on import
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImportError(
            f"torch-fidelity failed to import ({first}); reinstall torchvision to match "
            f"torch {torch.__version__}"
        ) from None
    return torch_fidelity


class InceptionFeatureExtractor:
    """2048-d pool3 features of torch-fidelity's TF-ported Inception-v3 (the FID of papers).

    Call on uint8 [N, H, W, C] (C = 1 is repeated to RGB; any size, resized to 299 inside)
    → float64 [N, 2048]. Raises ImportError (what to install) or FileNotFoundError (which
    weights file to put where) at construction; nothing is downloaded.
    """

    name = "inception-fid"
    dim = 2048
    spatial_dim = INCEPTION_SPATIAL_CHANNELS * 17 * 17
    num_classes = 1008  # the TF graph's logits (1,000 classes and 8 unused)
    comparable_to_inception = True

    def __init__(
        self,
        weights_path: str | Path | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 64,
    ) -> None:
        fidelity = _import_torch_fidelity()
        path = Path(weights_path) if weights_path is not None else inception_weights_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception-v3 weights not found at {path}; download {INCEPTION_URL} on a "
                "machine with internet access and copy it there (or pass its path)"
            )
        # torch-fidelity unpickles the file itself; a weights-only load first proves that it
        # holds nothing but tensors, so no code from the file can run.
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(
                f"{path} is not a plain tensor state dict ({type(err).__name__}); "
                f"download {INCEPTION_URL} again"
            ) from None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = fidelity.FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
        )
        self.model = self.model.eval().requires_grad_(False).to(self.device)
        self.batch_size = batch_size
        self.weights_path = path
        self._full = None  # the network with logits too, built on the first extract()

    def _input(self, images: np.ndarray) -> torch.Tensor:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise ValueError("Inception features take a uint8 numpy array [N, H, W, C]")
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"expected uint8 [N, H, W, C] with C in (1, 3), got {images.shape}")
        x = _tensor_nchw(images)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features float64 [N, 2048] of uint8 images [N, H, W, C], C in (1, 3)."""
        outs = [
            self.model(chunk.contiguous().to(self.device))[0].double().cpu()
            for chunk in self._input(images).split(self.batch_size)
        ]
        return torch.cat(outs).numpy() if outs else np.zeros((0, self.dim))

    @torch.no_grad()
    def extract(self, images: np.ndarray) -> Extracted:
        """Pool features, the spatial maps of Mixed_6e (caught by a forward hook) and the
        unbiased logits (torch-fidelity's Inception-Score input) in one pass."""
        if self._full is None:
            fidelity = _import_torch_fidelity()
            self._full = fidelity.FeatureExtractorInceptionV3(
                "inception-v3-compat",
                ["2048", "logits_unbiased"],
                feature_extractor_weights_path=str(self.weights_path),
            )
            self._full = self._full.eval().requires_grad_(False).to(self.device)
        maps: list[torch.Tensor] = []
        block = getattr(self._full, "Mixed_6e", None)
        if block is None:
            raise ValueError("this torch-fidelity has no Mixed_6e block; use --features digits")
        hook = block.register_forward_hook(lambda m, i, o: maps.append(o))
        pools, logits, spatial = [], [], []
        try:
            for chunk in self._input(images).split(self.batch_size):
                pool, logit = self._full(chunk.contiguous().to(self.device))
                pools.append(pool.double().cpu())
                logits.append(logit.double().cpu())
                spatial.append(maps.pop()[:, :INCEPTION_SPATIAL_CHANNELS].flatten(1).double().cpu())
        finally:
            hook.remove()
        if not pools:
            z = np.zeros
            return Extracted(z((0, self.dim)), z((0, self.spatial_dim)), z((0, self.num_classes)))
        return Extracted(*(torch.cat(t).numpy() for t in (pools, spatial, logits)))


def get_extractor(
    name: str, **kwargs: object
) -> DigitsFeatureExtractor | InceptionFeatureExtractor:
    """Extractor by name: "digits" (bundled, offline) or "inception" (torch-fidelity)."""
    if name == "digits":
        return DigitsFeatureExtractor(**kwargs)  # type: ignore[arg-type]
    if name == "inception":
        return InceptionFeatureExtractor(**kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown feature extractor {name!r}; choose one of: {', '.join(EXTRACTORS)}")
