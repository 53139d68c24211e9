"""The report's PNG figures (matplotlib, Agg backend). Each function writes one file and returns its path.

Images are (n, C, H, W) or (n, H, W) arrays with pixels in [0, 1] (clipped for display);
log p is in dB/dim; t is the noise variance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dsm.plumbing.plots import pyplot, save_figure
from dsm.stats.density import GEVFit, GumbelFit


def _display(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """One image as (H, W) with a gray colormap or (H, W, 3), clipped to [0, 1]."""
    a = np.clip(np.asarray(img, dtype=np.float64), 0, 1)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    elif a.ndim == 3:
        a = a.transpose(1, 2, 0)
    return a, ("gray" if a.ndim == 2 else None)


def is_image_shape(shape: Sequence[int]) -> bool:
    """(H, W) or (C, H, W) with C in {1, 3}."""
    return len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3))


def image_grid(images: np.ndarray, path: Path, titles: Sequence[str] | None = None, ncol: int = 8,
               suptitle: str | None = None) -> Path:
    """A grid of images (n, C, H, W) or (n, H, W) in [0, 1], with optional per-image titles."""
    plt = pyplot()
    n = len(images)
    ncol = max(1, min(ncol, n))
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.3 * ncol, 1.3 * nrow + (0.3 if suptitle else 0)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            a, cmap = _display(images[i])
            ax.imshow(a, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return save_figure(fig, path)


def scatter_pairs(x: np.ndarray, path: Path, title: str = "") -> Path:
    """Vector samples (n, d): the first two coordinates (or a histogram when d = 1)."""
    plt = pyplot()
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    fig, ax = plt.subplots(figsize=(4, 4))
    if x.shape[1] >= 2:
        ax.scatter(x[:, 0], x[:, 1], s=4, alpha=0.5)
        ax.set_xlabel("x[0]")
        ax.set_ylabel("x[1]")
    else:
        ax.hist(x[:, 0], bins=50)
        ax.set_xlabel("x[0]")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def logp_histogram(db: np.ndarray, fit: GumbelFit | None, path: Path, gev: GEVFit | None = None,
                   markers: dict[str, float] | None = None) -> Path:
    """Histogram of log p (dB/dim) on a log-frequency axis, with the ML Gumbel density (and the GEV
    density, dashed) scaled to counts, and vertical lines at ``markers`` (label -> dB/dim)."""
    plt = pyplot()
    db = np.asarray(db, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    _, edges, _ = ax.hist(db, bins=min(80, max(10, len(db) // 25)), color="tab:blue", alpha=0.7,
                               label=f"{len(db)} images")
    ax.set_yscale("log")
    grid = np.linspace(edges[0], edges[-1], 400)
    curves = []
    if fit is not None:
        curves.append((fit, "k-", f"Gumbel ({fit.tail} tail): loc {fit.loc:.2f}, scale {fit.scale:.2f}\n"
                                  f"KS {fit.ks_stat:.3f}"))
    if gev is not None:
        curves.append((gev, "r--", f"GEV: xi {gev.xi:+.3f}, loc {gev.loc:.2f}, scale {gev.scale:.2f}\n"
                                   f"KS {gev.ks_stat:.3f}"))
    for law, style, label in curves:
        expected = law.pdf(grid) * len(db) * (edges[1] - edges[0])
        keep = expected >= 0.1  # below a tenth of an image per bin the curve only stretches the log axis
        ax.plot(grid[keep], expected[keep], style, lw=1.5, label=label)
    lo, hi = edges[0], edges[-1]
    span = hi - lo
    for (label, value), color in zip((markers or {}).items(), ("tab:green", "tab:brown", "tab:purple")):
        # A marker far outside the histogram would squash it: draw it at the edge, its value in the label.
        off = not lo - span / 2 <= value <= hi + span / 2
        x = min(max(value, lo - 0.05 * span), hi + 0.05 * span) if off else value
        ax.axvline(x, color=color, ls=":", lw=1.5, label=f"{label}: {value:.2f}" + (" (off scale)" if off else ""))
    ax.set_ylim(bottom=0.5)
    ax.set_xlabel("log p (dB/dim)")
    ax.set_ylabel("images (log scale)")
    ax.legend(fontsize=6)
    return save_figure(fig, path)


def deff_bands(t: np.ndarray, deff: np.ndarray, deff_other: np.ndarray, d: int, ref_rows: Sequence[int],
               ref_labels: Sequence[str], path: Path) -> Path:
    """d_eff against t: the data set's mean (denoising estimator; the time-score mean dashed),
    10-90 and 25-75 percentile bands, and a few reference images. deff: (n, T)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    q10, q25, q75, q90 = np.percentile(deff, [10, 25, 75, 90], axis=0)
    ax.fill_between(t, q10, q90, color="tab:blue", alpha=0.15, label="10-90 %")
    ax.fill_between(t, q25, q75, color="tab:blue", alpha=0.3, label="25-75 %")
    ax.plot(t, deff.mean(0), "-", color="tab:blue", lw=2, label="mean (denoising)")
    ax.plot(t, deff_other.mean(0), "--", color="black", lw=1, label="mean (time score)")
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(1, len(ref_rows))))
    for c, r, lab in zip(colors, ref_rows, ref_labels):
        ax.plot(t, deff[r], ":", color=c, lw=1.3, marker=".", label=lab)
    ax.axhline(d, color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("noise variance t")
    ax.set_ylabel(f"d_eff (d = {d})")
    ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, path)


def deff_gap(t: np.ndarray, gap_mean: np.ndarray, gap_stderr: np.ndarray, d: int, path: Path) -> Path:
    """Mean gap (time-score minus denoising estimator) / d against t, with 2-standard-error bars."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.errorbar(t, gap_mean / d, yerr=2 * gap_stderr / d, fmt="o-", ms=3, capsize=2)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("noise variance t")
    ax.set_ylabel("(d_eff time - d_eff denoising) / d")
    return save_figure(fig, path)


def logp_vs_sparsity(pr: np.ndarray, db: np.ndarray, rho: float, path: Path,
                     line: tuple[float, float] | None = None) -> Path:
    """Scatter of log p (dB/dim) against the Haar participation ratio, with Spearman's rho and,
    as the paper draws it, the least-squares line ``line`` = (slope, intercept)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.8))
    ax.scatter(pr, db, s=3 if len(db) > 2000 else 8, alpha=0.4)
    if line is not None:
        xs = np.array([np.min(pr), np.max(pr)])
        ax.plot(xs, line[0] * xs + line[1], "k-", lw=1, label=f"least squares: slope {line[0]:.2f} dB/dim per unit PR")
        ax.legend(fontsize=7)
    ax.set_xlabel("Haar participation ratio (1/N sparse, 1 dense)")
    ax.set_ylabel("log p (dB/dim)")
    ax.set_title(f"Spearman rho = {rho:.3f} ({len(db)} images)", fontsize=9)
    return save_figure(fig, path)


def _ref_colors(k: int) -> np.ndarray:
    """The paper's colors for reference images ordered by log p (plasma, low to high)."""
    return pyplot().cm.plasma(np.linspace(0, 0.9, max(1, k)))


def logp_affine(a: np.ndarray, b: np.ndarray, logp_db: np.ndarray, labels: Sequence[str], heat: int,
                path: Path) -> Path:
    """Fig. 4: left, log p(a x + b) against a at the b nearest 1/2, one curve per reference image
    (a up to 1/2, where a x + 1/2 stays in [0, 1]); right, the (a, b) map of image ``heat``,
    blank where a + b > 1. logp_db: (k, len(b), len(a)) in dB/dim."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    j = int(np.argmin(np.abs(b - 0.5)))
    keep = a <= 1 - b[j] + 1e-9
    for c, curve, lab in zip(_ref_colors(len(logp_db)), logp_db[:, j], labels):
        left.plot(a[keep], curve[keep], color=c, lw=1.2, label=lab)
    left.set_xlabel("contrast a")
    left.set_ylabel(f"log p(a x + {b[j]:.2f}) (dB/dim)")
    left.legend(fontsize=5, ncol=2)
    grid = np.where(a[None, :] + b[:, None] <= 1 + 1e-9, logp_db[heat], np.nan)
    da, db = (a[-1] - a[0]) / (len(a) - 1) / 2, (b[-1] - b[0]) / (len(b) - 1) / 2  # pixels centred on the grid
    im = right.imshow(grid, origin="lower", extent=(a[0] - da, a[-1] + da, b[0] - db, b[-1] + db), aspect="auto",
                      cmap="hot")
    fig.colorbar(im, ax=right, label="log p(a x + b) (dB/dim)")
    right.set_xlabel("contrast a")
    right.set_ylabel("offset b")
    right.set_title(f"reference image at {labels[heat]}", fontsize=8)
    return save_figure(fig, path)


def noisy_logp(t: np.ndarray, curves: np.ndarray, labels: Sequence[str], path: Path, average: np.ndarray | None = None,
               t_min: float | None = None) -> Path:
    """Fig. 5 left: E[log p(y, t) | x] (dB/dim) against t, one curve per reference image (k, T),
    the data average dashed, and the training t_min as a vertical line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for c, curve, lab in zip(_ref_colors(len(curves)), curves, labels):
        ax.plot(t, curve, color=c, lw=1.2, label=lab)
    if average is not None:
        ax.plot(t, average, "k--", lw=1.5, label="data average")
    if t_min is not None:
        ax.axvline(t_min, color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("noise variance t")
    ax.set_ylabel("E[log p(y, t) | x] (dB/dim)")
    ax.legend(fontsize=5, ncol=2)
    return save_figure(fig, path)


def baselines(names: Sequence[str], m: dict, diffs: Sequence[np.ndarray], column: str, path: Path) -> Path:
    """Left: held-out mean log p (nats/dim, 2-standard-error bars) of each baseline as fitted (open)
    and smoothed to t_min (filled), the energy model as a line with its 2-SE band. Right: the
    per-image paired differences model - baseline (nats/dim) in the verdict ``column``, one
    histogram per baseline. m: ``metrics['baselines']``; diffs: one (n,) array per baseline."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    mu, se = m["model_logp_nats_per_dim"], m["model_logp_stderr_nats_per_dim"]
    left.axhspan(mu - 2 * se, mu + 2 * se, color="tab:red", alpha=0.2)
    left.axhline(mu, color="tab:red", lw=1.5, label="energy model")
    xs = np.arange(len(names))
    for tag, style, label in (("", "o", "as fitted"), ("smoothed_", "s", "smoothed to t_min")):
        keys = [f"k{k}_{tag}logp" for k in m["ks"]]
        if keys[0] + "_nats_per_dim" not in m:
            continue
        left.errorbar(xs + (0.1 if tag else -0.1), [m[k + "_nats_per_dim"] for k in keys],
                      yerr=[2 * m[k + "_stderr_nats_per_dim"] for k in keys], fmt=style, capsize=3,
                      mfc="none" if not tag else None, color="black", label=label)
    left.set_xticks(xs, [f"K = {k}" for k in m["ks"]])
    left.set_ylabel("held-out log p (nats/dim)")
    left.legend(fontsize=7)
    for c, name, diff in zip(plt.cm.tab10(np.arange(len(names))), names, diffs):
        right.hist(diff, bins=min(60, max(10, len(diff) // 20)), histtype="step", color=c,
                   label=f"{name}: mean {diff.mean():+.4f}")
    right.axvline(0, color="gray", lw=0.8)
    right.set_xlabel(f"model - baseline log p (nats/dim per image)\nbaseline {column}")
    right.set_ylabel("images")
    right.legend(fontsize=6)
    return save_figure(fig, path)
