"""Figures as PNG files: schedules, where the bits of the bound are, training curves, sample
grids, and metrics against the number of sampling steps.

Matplotlib is used through `Figure` objects and the Agg canvas only: no pyplot, no global
backend switch, nothing is displayed. Every function writes one PNG atomically (creating
parent folders), returns its path, and raises a one-line ValueError for input it cannot
draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from iddpm._io import atomic_write, read_jsonl
from iddpm.diffusion import schedules

DPI = 150
QUARTILE_KEYS = ("loss_q0", "loss_q1", "loss_q2", "loss_q3")
LOSS_KEYS = ("loss", "mse", "vb")
LABELS = {"mse": "mse (ε, per dim)", "vb": "vb (bits/dim)"}


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
    return fig, axes


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plots are written as PNG; give a path ending in .png, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))


def _finite_1d(name: str, values: object) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-d sequence, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf; drop those entries before plotting")
    return arr


def plot_schedules(path: str | Path, T: int = 1000) -> Path:
    """ᾱ_t for the linear and cosine schedules against t/T (the paper's Figure 5), next to
    log SNR = log(ᾱ/(1 − ᾱ)) (P4, P5). Code step t is the paper's t+1, so x = (t+1)/T."""
    fig, (ax_ab, ax_snr) = _figure(10.0, 4.0, ncols=2)
    x = np.arange(1, T + 1) / T
    for name, style in (("linear", "-"), ("cosine", "--")):
        alpha_bar = np.cumprod(1.0 - schedules.get(name, T).numpy())
        ax_ab.plot(x, alpha_bar, style, lw=2, label=name)
        snr = alpha_bar / np.maximum(1.0 - alpha_bar, 1e-300)
        ax_snr.plot(x, np.log(np.maximum(snr, 1e-300)), style, lw=2, label=name)
    ax_ab.set(xlabel="diffusion step t/T", ylabel="ᾱ_t", xlim=(0, 1), ylim=(0, 1.02))
    ax_ab.set_title(f"ᾱ_t (fraction of signal variance kept), T = {T}")
    ax_snr.set(xlabel="diffusion step t/T", ylabel="log SNR = log(ᾱ_t / (1 − ᾱ_t))", xlim=(0, 1))
    ax_snr.set_title("signal-to-noise ratio (natural log)")
    for ax in (ax_ab, ax_snr):
        ax.legend(title="schedule")
    return _save(fig, path)


def plot_bound_terms(
    path: str | Path,
    vb_terms: Sequence[float] | np.ndarray,
    prior_bits: float,
    unit: str = "bits/dim",
) -> Path:
    """Where the bits are: each term L_{t} of the bound (P10) against t on a log scale, and
    the cumulative share of the total (L_0 + … + L_{T−1} + prior) up to each t.

    vb_terms: [T] in `unit` (index t is the paper's L_t: t=0 is the decoder NLL L_0);
    prior_bits: L_T in the same unit. Non-positive terms are left out of the log panel.
    """
    terms = _finite_1d("vb_terms", vb_terms)
    if not math.isfinite(prior_bits):
        raise ValueError(f"prior_bits must be finite, got {prior_bits!r}")
    total = terms.sum() + prior_bits
    if total <= 0:
        raise ValueError(f"the bound's terms sum to {total:.3g} <= 0; expected positive terms")
    T = len(terms)
    t = np.arange(T)
    fig, (ax_terms, ax_cum) = _figure(10.0, 4.0, ncols=2)
    kl = terms[1:] > 0
    ax_terms.plot(t[1:][kl], terms[1:][kl], lw=1.5, label="KL terms L_t, t ≥ 1")
    if terms[0] > 0:
        ax_terms.plot([0], terms[:1], "o", color="C1", label=f"decoder NLL L_0 = {terms[0]:.3g}")
    if prior_bits > 0:
        ax_terms.plot([T], [prior_bits], "s", color="C3", label=f"prior L_T = {prior_bits:.3g}")
    ax_terms.set_yscale("log")
    ax_terms.set(xlabel="timestep t", ylabel=f"term of the bound ({unit})")
    ax_terms.set_title(f"terms of the bound (total {total:.4g} {unit})")
    ax_terms.legend()
    # Cumulative share on a log axis of the paper's step t+1: most bits sit at small t.
    share = 100 * np.cumsum(terms) / total
    ax_cum.plot(t + 1, share, lw=2, color="C2", label="Σ_{s≤t} L_s / total")
    for q in (50, 90, 99):
        k = int(np.searchsorted(share, q * share[-1] / 100))
        ax_cum.plot([k + 1], [share[k]], "o", color="0.3", ms=4)
        right = k + 1 > math.sqrt(T)  # keep labels inside the axes at either end
        offset, align = ((-8, 4), "right") if right else ((6, -12), "left")
        ax_cum.annotate(f"{q}% by t={k}", (k + 1, share[k]), xytext=offset,
                        textcoords="offset points", fontsize=8, ha=align)  # fmt: skip
    ax_cum.set_xscale("log")
    ax_cum.set(xlabel="paper step t + 1 (log scale)", ylabel="cumulative share of bound (%)")
    ax_cum.set_ylim(min(0.0, share.min()), 108)
    ax_cum.set_yticks(np.arange(0, 101, 20))
    ax_cum.set_title(f"where the bits are (prior: {100 * prior_bits / total:.2g}% of total)")
    ax_cum.legend(loc="lower right")
    return _save(fig, path)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {path} does not exist")
    return read_jsonl(path)


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [
        (r.get("step", i), r[key])
        for i, r in enumerate(rows)
        if isinstance(r.get(key), int | float) and math.isfinite(r[key])
    ]
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def _smooth(y: np.ndarray, frac: float = 0.05) -> np.ndarray:
    """Exponential moving average with a span of about `frac` of the points."""
    a = min(1.0, 2.0 / (max(1.0, frac * len(y)) + 1.0))
    out, acc = np.empty_like(y), y[0]
    for i, v in enumerate(y):
        acc = a * v + (1 - a) * acc
        out[i] = acc
    return out


def _plot_keys(ax, rows: list[dict], keys: Sequence[str]) -> bool:
    drawn = False
    for i, key in enumerate(keys):
        x, y = _series(rows, key)
        if len(x) == 0:
            continue
        ax.plot(x, y, color=f"C{i}", alpha=0.25, lw=0.8)
        ax.plot(x, _smooth(y), color=f"C{i}", lw=1.8, label=LABELS.get(key, key))
        if (y <= 0).any():
            ax.set_yscale("linear")
        drawn = True
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, f"no {', '.join(keys)} logged", ha="center", transform=ax.transAxes)
    return drawn


def plot_training_curves(path: str | Path, metrics_jsonl_path: str | Path) -> Path:
    """Loss (and mse, vb when logged) and the loss by timestep quartile (loss_q0 = t in the
    first quarter of [0, T)) against the optimisation step, from RUN_DIR/metrics.jsonl.

    Missing keys are skipped (rows without `step` use their line index); faint lines are
    the raw values, bold lines an exponential moving average.
    """
    rows = _read_jsonl(Path(metrics_jsonl_path))
    fig, (ax_loss, ax_q) = _figure(10.0, 4.0, ncols=2)
    for ax in (ax_loss, ax_q):
        ax.set_yscale("log")
    drawn = _plot_keys(ax_loss, rows, LOSS_KEYS)
    drawn |= _plot_keys(ax_q, rows, QUARTILE_KEYS)
    if not drawn:
        raise ValueError(
            f"{metrics_jsonl_path} has no numeric {', '.join(LOSS_KEYS + QUARTILE_KEYS)} "
            "values; is it a metrics.jsonl written by training?"
        )
    ax_loss.set(xlabel="training step", ylabel="loss (per example, mean over batch)")
    ax_loss.set_title("training loss")
    ax_q.set(xlabel="training step", ylabel="loss")
    ax_q.set_title("loss by timestep quartile (q0: smallest t)")
    return _save(fig, path)


def image_grid(images: np.ndarray, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """Tile uint8 images [N, H, W, C] (C = 1 or 3) into one uint8 [H', W', C] array.

    nrow: images per row (default ⌈√N⌉); padding: white pixels between and around tiles.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        kind = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a uint8 numpy array [N, H, W, C], got {kind}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(
            f"images must be [N, H, W, C] with N >= 1 and C in (1, 3), got {images.shape}"
        )
    n, h, w, c = images.shape
    ncol = nrow or math.ceil(math.sqrt(n))
    if ncol < 1 or padding < 0:
        raise ValueError(f"nrow must be >= 1 and padding >= 0, got {nrow} and {padding}")
    nrows = math.ceil(n / ncol)
    grid = np.full(
        (nrows * (h + padding) + padding, ncol * (w + padding) + padding, c), 255, np.uint8
    )
    for i in range(n):
        r, k = divmod(i, ncol)
        y, x = padding + r * (h + padding), padding + k * (w + padding)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def save_image_grid(
    path: str | Path,
    images: np.ndarray,
    nrow: int | None = None,
    scale: int = 4,
    padding: int = 1,
) -> Path:
    """Write uint8 images [N, H, W, C] as one PNG grid, each pixel enlarged `scale` times
    (nearest neighbour, so 8×8 digits stay crisp). Output size is `scale` × `image_grid`'s.
    """
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    grid = image_grid(images, nrow=nrow, padding=padding)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: img.save(f, format="PNG"))


def plot_metric_vs_steps(
    path: str | Path,
    steps: Sequence[int],
    values: Mapping[str, Sequence[float]],
    ylabel: str,
    title: str | None = None,
    log_x: bool = True,
    log_y: bool = False,
) -> Path:
    """One line per run (name → values) of a metric (FID, bits/dim, …) against the number of
    sampling steps K of the respaced process (P14); x is log-scaled by default. NaN values
    (a run that is missing at some K) leave a gap."""
    x = _finite_1d("steps", steps)
    if (x <= 0).any():
        raise ValueError(f"steps must be positive step counts, got {list(steps)}")
    if not values:
        raise ValueError("values is empty; pass at least one name -> list of metric values")
    fig, (ax,) = _figure(6.5, 4.5)
    for i, (name, ys) in enumerate(values.items()):
        y = np.asarray(ys, dtype=np.float64)
        if y.shape != x.shape:
            raise ValueError(
                f"values[{name!r}] has {y.size} entries but there are {x.size} step counts"
            )
        ok = np.isfinite(y)
        ax.plot(x[ok], y[ok], marker="o", ms=4, lw=1.8, color=f"C{i}", label=name)
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xticks(x, [str(int(s)) if float(s).is_integer() else str(s) for s in x])
    ax.minorticks_off()
    ax.set(xlabel="sampling steps K", ylabel=ylabel)
    ax.set_title(title or f"{ylabel} vs number of sampling steps")
    ax.legend()
    return _save(fig, path)
