"""The report's "Classical baselines" section: the energy model against a full-covariance Gaussian
and Gaussian mixtures (:mod:`dsm.stats.baselines`) on the same held-out images, in the same units.

The baselines are fitted on the training split (read with the reader ``dsm score`` uses, a seeded
subsample of at most ``max_train`` images) and evaluated on the scored images, piece by piece, so
that each scored key gets its baseline log p beside the model's ``logp_nats``. Everything is
paired by key. Units: nats/dim for means and differences, bits/dim = nats/dim / ln 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsm.report import figures
from dsm.report.scores import Scores, iter_pieces
from dsm.stats import baselines as bl

SECTION = "## Classical baselines"
MAX_TRAIN = 10_000  # default training subsample: EM costs about n K d^2 per iteration
FIGURE, ARRAYS = "baselines.png", "baselines_logp.npz"


@dataclass
class BaselineOptions:
    """What the section fits and how. ``*_source`` say where a value came from (for the report);
    without t_min, ``t_min_source`` says why the smoothed columns are left out."""

    ks: tuple[int, ...] = ()  # components per baseline; 1 is the full-covariance Gaussian
    train_data: str | None = None  # the training split: shard folder, .npy or image folder
    train_source: str = "--train-data"
    max_train: int = MAX_TRAIN
    reg_covar: float = bl.REG_COVAR
    t_min: float | None = None  # noise variance of the smoothed columns
    t_min_source: str = "no --model and no --smooth-t"
    seed: int = bl.SEED

    def check(self) -> None:
        if any(k < 1 for k in self.ks) or len(set(self.ks)) != len(self.ks):
            raise ValueError(f"--baselines must be distinct positive integers (K), got {list(self.ks)}")
        if self.ks and not self.train_data:
            raise ValueError("--baselines needs the training split: pass --train-data PATH (or --model, whose "
                             "config names it as data.path)")
        if self.max_train < 2 or not self.reg_covar >= 0 or (self.t_min is not None and not self.t_min > 0):
            raise ValueError(f"need --baseline-max-train >= 2, --reg-covar >= 0 and --smooth-t > 0; got "
                             f"{self.max_train}, {self.reg_covar:g}, {self.t_min}")


def parse_ks(text: str | None) -> tuple[int, ...]:
    """'1,10' -> (1, 10); '' or None -> ()."""
    if not text:
        return ()
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--baselines takes comma-separated integers K, e.g. 1,10; got {text!r}") from None


@dataclass
class Fitted:
    """The fitted baselines and the training data they saw."""

    baselines: list[bl.Baseline]
    train_logp: list[bl.MeanSE]  # each baseline's mean log p on its own training images (nats/dim)
    n_total: int  # images in the training split; the fit used a subsample when above max_train
    path: Path


def read_training(path: str | Path, d: int, max_n: int, seed: int) -> tuple[np.ndarray, int, Path]:
    """(x (m, d) float64, images in the split, resolved path): the training split, or a uniform
    subsample of ``max_n`` of its images drawn from ``seed`` (pieces without a drawn row are not read)."""
    from dsm.data.inputs import open_input

    inp = open_input(path)
    counts = np.array([p.count for p in inp.pieces])
    starts = np.concatenate([[0], np.cumsum(counts)])
    n = int(starts[-1])
    keep = np.sort(np.random.default_rng(seed).choice(n, max_n, replace=False)) if n > max_n else np.arange(n)
    pieces = [i for i in range(len(counts)) if np.any((keep >= starts[i]) & (keep < starts[i + 1]))]
    parts = []
    for i, (_, x) in zip(pieces, iter_pieces(inp, pieces=pieces)):
        flat = bl.flatten(x)
        if flat.shape[1] != d:
            raise ValueError(f"{inp.path}: training images have d = {flat.shape[1]} dimensions, the scores d = {d}")
        parts.append(flat[keep[(keep >= starts[i]) & (keep < starts[i] + len(flat))] - starts[i]])
    return np.concatenate(parts), n, inp.path


def fit(opts: BaselineOptions, d: int) -> Fitted | None:
    """Read the training split and fit every K (None without --baselines). Run before the report
    is written, so that a bad training path fails the command instead of leaving half a report."""
    opts.check()
    if not opts.ks:
        return None
    x, n_total, path = read_training(opts.train_data, d, opts.max_train, opts.seed)
    fitted = bl.fit_baselines(x, opts.ks, reg_covar=opts.reg_covar, seed=opts.seed)
    return Fitted(fitted, [bl.mean_se(bl.log_prob(b.density, x), d) for b in fitted], n_total, path)


def heldout_logp(data, shape, keys: list[str], fitted: Fitted, t_min: float | None):
    """(rows of ``keys`` found, log p as fitted (B, n), smoothed to t_min (B, n) or None, note): each
    baseline's log p in nats per image on the scored images, read piece by piece with ``dsm score``'s
    reader. Never raises: an unreadable input gives no rows and a note."""
    from dsm.data.inputs import open_input

    if not data:
        return [], None, None, "scores.json names no data and no --data was given"
    row_of = {k: i for i, k in enumerate(keys)}
    rows, lp0, lpt = [], [], []
    try:
        for piece_keys, x in iter_pieces(open_input(data), shape):
            hit = [j for j, k in enumerate(piece_keys) if k in row_of]
            if not hit:
                continue
            flat = bl.flatten(x[hit])
            rows += [row_of[piece_keys[j]] for j in hit]
            lp0.append([bl.log_prob(b.density, flat) for b in fitted.baselines])
            if t_min is not None:
                lpt.append([bl.log_prob(b.density, flat, t_min) for b in fitted.baselines])
    except (ValueError, FileNotFoundError, OSError) as e:
        return [], None, None, f"could not read the scored images from {data}: {e}"
    if not rows:
        return [], None, None, f"none of the scored keys are in {data}"
    note = f"{len(keys) - len(rows)} of the {len(keys)} scored keys are not in {data}" if len(rows) < len(keys) else ""
    stack = lambda parts: np.concatenate([np.stack(p) for p in parts], axis=1)
    return rows, stack(lp0), stack(lpt) if lpt else None, note


def section(sc: Scores, folder: Path, fitted: Fitted | None, opts: BaselineOptions, data, shape,
            metrics: dict) -> list[str]:
    """The section's markdown; fills ``metrics['baselines']`` and writes the figure and the arrays."""
    md = [SECTION, ""]
    if fitted is None:
        return md + ["No baselines: pass `--baselines 1,10` (K values; 1 is the full-covariance Gaussian) to fit "
                     "Gaussian mixtures on the training split (`--train-data`, default the model's data.path) and "
                     "compare them with the model on these images.", ""]
    rows, lp0, lpt, note = heldout_logp(data, shape, sc.keys, fitted, opts.t_min)
    if not rows:
        return md + [f"Baselines fitted, but not evaluated: {note}.", ""]
    model = sc.logp_nats[rows]
    m = _stats(sc.d, model, fitted, lp0, lpt, opts)
    metrics["baselines"] = m
    keys = np.array([sc.keys[r] for r in rows])
    arrays = {f"k{b.k}_logp_nats": lp0[i] for i, b in enumerate(fitted.baselines)}
    if lpt is not None:
        arrays.update({f"k{b.k}_smoothed_logp_nats": lpt[i] for i, b in enumerate(fitted.baselines)})
    np.savez(folder / ARRAYS, keys=keys, model_logp_nats=model, **arrays)
    col = lpt if lpt is not None else lp0
    figures.baselines([b.name for b in fitted.baselines], m, [(model - c) / sc.d for c in col],
                      "smoothed to t_min" if lpt is not None else "as fitted", folder / FIGURE)
    return md + _lines(m, fitted, opts, note, data) + [f"![classical baselines]({FIGURE})", ""]


def _stats(d: int, model: np.ndarray, fitted: Fitted, lp0: np.ndarray, lpt: np.ndarray | None,
           opts: BaselineOptions) -> dict:
    """Flat metrics (scalars become MLflow's report_baselines_*): per K the held-out mean log p
    +- SE as fitted and smoothed, the paired differences, and the verdict against the best K."""
    own = bl.mean_se(model, d)
    m: dict = {"n": own.n, "d": d, "n_train": fitted.baselines[0].n_train, "n_train_total": fitted.n_total,
               "train_data": str(fitted.path), "reg_covar": opts.reg_covar, "seed": opts.seed,
               "n_init": bl.N_INIT, "max_iter": bl.MAX_ITER, "t_min": opts.t_min,
               "t_min_source": opts.t_min_source, "ks": [b.k for b in fitted.baselines],
               "model_logp_nats_per_dim": own.mean_nats_per_dim,
               "model_logp_stderr_nats_per_dim": own.stderr_nats_per_dim}
    for i, b in enumerate(fitted.baselines):
        p = f"k{b.k}_"
        m.update({p + "converged": b.converged, p + "n_iter": b.n_iter,
                  p + "train_logp_nats_per_dim": fitted.train_logp[i].mean_nats_per_dim})
        for tag, lp in (("", lp0), ("smoothed_", lpt)):
            if lp is None:
                continue
            s, diff = bl.mean_se(lp[i], d), bl.paired_difference(model, lp[i], d)
            m.update({f"{p}{tag}logp_nats_per_dim": s.mean_nats_per_dim,
                      f"{p}{tag}logp_stderr_nats_per_dim": s.stderr_nats_per_dim,
                      f"{p}{tag}diff_nats_per_dim": diff.mean_nats_per_dim,
                      f"{p}{tag}diff_stderr_nats_per_dim": diff.stderr_nats_per_dim,
                      f"{p}{tag}diff_bits_per_dim": diff.mean_bits_per_dim,
                      f"{p}{tag}diff_stderr_bits_per_dim": diff.stderr_bits_per_dim})
    tag = "smoothed_" if lpt is not None else ""
    best = max(fitted.baselines, key=lambda b: m[f"k{b.k}_{tag}logp_nats_per_dim"])
    m.update({"verdict_column": "smoothed to t_min" if tag else "as fitted", "best_k": best.k,
              **{f"best_{q}": m[f"k{best.k}_{tag}{q}"] for q in ("diff_nats_per_dim", "diff_stderr_nats_per_dim",
                                                                 "diff_bits_per_dim", "diff_stderr_bits_per_dim")}})
    m["verdict"] = verdict(m, best.name)
    return m


def verdict(m: dict, best_name: str) -> str:
    """One line: the model against the best baseline (the highest held-out mean log p in the verdict
    column), paired difference +- paired SE; 'within 2 standard errors' when it is no clearer."""
    x, se = m["best_diff_nats_per_dim"], m["best_diff_stderr_nats_per_dim"]
    xb, seb = m["best_diff_bits_per_dim"], m["best_diff_stderr_bits_per_dim"]
    who = f"the best baseline ({best_name}, {m['verdict_column']})"
    size = f"{abs(x):.4f} +- {se:.4f} nats/dim ({abs(xb):.4f} +- {seb:.4f} bits/dim), paired over {m['n']} images"
    if not abs(x) > 2 * se:
        return f"The energy model and {who} are within 2 standard errors: {x:+.4f} +- {se:.4f} nats/dim."
    return f"The energy model {'beats' if x > 0 else 'is worse than'} {who} by {size}."


def _pm(m: dict, key: str, bits: bool = False) -> str:
    """'mean +- stderr' of a metrics pair, with the bits/dim pair after it when ``bits``."""
    if key + "_nats_per_dim" not in m:
        return "-"
    s = f"{m[key + '_nats_per_dim']:+.4f} +- {m[key + '_stderr_nats_per_dim']:.4f}"
    return s + (f" ({m[key + '_bits_per_dim']:+.4f} +- {m[key + '_stderr_bits_per_dim']:.4f} bits)" if bits else "")


def _lines(m: dict, fitted: Fitted, opts: BaselineOptions, note: str, data) -> list[str]:
    t = (f"t_min = {opts.t_min:g} ({opts.t_min_source})" if opts.t_min is not None
         else f"not computed: {opts.t_min_source} (pass --smooth-t)")
    md = [f"**{m['verdict']}**", "",
          f"Held-out log p in nats/dim (+- standard error over the {m['n']} scored images), and the paired "
          "difference model - baseline per image (+- paired standard error; positive: the model gives the "
          "held-out images more probability). Smoothed: the baseline convolved with N(0, t_min I), the noise "
          f"floor the energy model's own log p carries; {t}.",
          "", "| density | K | reg_covar | converged (EM iterations) | train log p, as fitted | held-out log p, as "
          "fitted | held-out log p, smoothed | model - baseline, as fitted | model - baseline, smoothed |",
          "|---|---|---|---|---|---|---|---|---|",
          f"| energy model (`logp_nats`) | | | | | {_pm(m, 'model_logp')} | {_pm(m, 'model_logp')} | | |"]
    for b in fitted.baselines:
        p = f"k{b.k}_"
        md.append(f"| {b.name} | {b.k} | {b.reg_covar:g} | {'yes' if b.converged else '**no**'} ({b.n_iter}) | "
                  f"{m[p + 'train_logp_nats_per_dim']:+.4f} | {_pm(m, p + 'logp')} | {_pm(m, p + 'smoothed_logp')} | "
                  f"{_pm(m, p + 'diff', True)} | {_pm(m, p + 'smoothed_diff', True)} |")
    sub = (f"a seeded subsample of {m['n_train']} of its {m['n_train_total']} images (--baseline-max-train)"
           if m["n_train"] < m["n_train_total"] else f"all {m['n_train']} images")
    md += ["", f"Fitted by scikit-learn's EM (full covariances, reg_covar {opts.reg_covar:g} added to each "
           f"diagonal, k-means init with seed {opts.seed}, n_init {bl.N_INIT}, max_iter {bl.MAX_ITER}) on "
           f"`{fitted.path}` ({opts.train_source}), {sub}. Per-image values: `{ARRAYS}`.", ""]
    if not all(b.converged for b in fitted.baselines):
        md += ["A fit marked **no** stopped at max_iter: its log p is that of the last EM iterate.", ""]
    if data and Path(data).expanduser().resolve() == fitted.path:
        md += ["**The baselines were fitted on the scored images themselves**: their log p here is a training "
               "likelihood, not a held-out one.", ""]
    if note:
        md += [f"Only the images found were compared: {note}.", ""]
    return md


__all__ = ["SECTION", "BaselineOptions", "parse_ks", "read_training", "fit", "heldout_logp", "section", "verdict"]
