"""Build ``dsm report``'s folder from a ``dsm score`` output: ``report.md``, PNG figures, ``metrics.json``.

No Ray, no MLflow here (the command logs the folder afterwards). Inputs, in units:

- the parts table (docs/scoring.md): ``logp_nats`` (nats per image), ``logp_db_per_dim``,
  ``nll_bpd``, and the t-grid lists ``deff_denoising`` / ``deff_time`` (+ stderrs);
- ``scores.json`` beside the parts: ``options.data`` (where the images are), ``options.t_grid``,
  ``summary.dim`` (d), and ``mlflow_run_id`` when ``dsm score`` logged a run;
- the images themselves, re-read from ``options.data`` (or ``data=``) with the reader
  ``dsm score`` used, so that keys map to the same images. Missing images are reported in
  the affected sections, never fatal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dsm import density_stats as ds
from dsm.report import figures

REPORT_FILE, METRICS_FILE = "report.md", "metrics.json"
REFERENCE_QUANTILES = (0.02, 0.25, 0.5, 0.75, 0.98)  # log p quantiles of the d_eff reference images

SECTIONS = (
    "## Distribution of log p",
    "## Entropy and the typical set",
    "## Most and least probable images",
    "## Effective dimensionality",
    "## Sparsity: log p against the Haar participation ratio",
)


@dataclass
class Scores:
    """A scored data set: the table as numpy columns, and what scores.json says about it."""

    root: Path
    keys: list[str]
    logp_nats: np.ndarray  # (n,)
    logp_db: np.ndarray  # (n,) dB/dim
    nll_bpd: np.ndarray  # (n,) bits/dim, in the convention of `eight_bit`
    t_grid: np.ndarray  # (T,) noise variances, increasing; empty without grid columns
    grids: dict[str, np.ndarray]  # name -> (n, T)
    d: int
    eight_bit: bool
    info: dict = field(default_factory=dict)  # scores.json (empty when absent)

    @property
    def n(self) -> int:
        return len(self.keys)


def resolve_scores_dir(path: str | Path) -> Path:
    """The ``dsm score --out`` folder, given it or its ``parts`` folder (which ``dsm score`` prints)."""
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise ValueError(f"{p}: no such scores folder (give dsm score's --out folder or its parts/)")
    if p.name == "parts" and not (p / "parts").is_dir():
        p = p.parent
    if not any((p / "parts").glob("part-*.parquet")):
        raise ValueError(f"{p}: no parquet parts under {p / 'parts'} (is this a `dsm score --out` folder?)")
    return p


def read_scores_dir(path: str | Path, d: int | None = None) -> Scores:
    """Read the parts and scores.json. d (dimensions per image): scores.json's ``summary.dim``,
    else the argument, else recovered from log p in nats against dB/dim."""
    import pyarrow.parquet as pq

    root = resolve_scores_dir(path)
    info: dict = {}
    opt_file = root / "scores.json"
    if opt_file.is_file():
        try:
            info = json.loads(opt_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{opt_file}: not valid JSON ({e})") from None
    files = sorted((root / "parts").glob("part-*.parquet"))
    table = pq.ParquetDataset([str(f) for f in files]).read().sort_by("key")
    missing = [c for c in ("key", "logp_nats", "logp_db_per_dim", "nll_bpd") if c not in table.column_names]
    if missing:
        raise ValueError(f"{root / 'parts'}: missing column(s) {', '.join(missing)} (not written by dsm score?)")
    col = lambda c: np.asarray(table.column(c).to_numpy(), dtype=np.float64)
    logp, db, nll = col("logp_nats"), col("logp_db_per_dim"), col("nll_bpd")
    t_grid = info.get("options", {}).get("t_grid")
    if t_grid is None:
        meta = pq.read_schema(files[0]).metadata or {}
        t_grid = json.loads(meta.get(b"dsm.t_grid", b"[]"))
    grids = {c: np.asarray(table.column(c).to_pylist(), dtype=np.float64).reshape(len(logp), -1)
             for c in ("mse", "deff_denoising", "deff_time", "deff_denoising_stderr", "deff_time_stderr")
             if c in table.column_names}
    d = int(info.get("summary", {}).get("dim") or d or _dim_from_units(logp, db, root))
    # 8-bit convention: nll = 8 - log p / (d ln 2); plain: nll = -log p / (d ln 2).
    offset = float(np.median(nll + logp / (d * math.log(2))))
    return Scores(root, [str(k) for k in table.column("key").to_pylist()], logp, db, nll,
                  np.asarray(t_grid, dtype=np.float64), grids, d, abs(offset - 8) < 1e-3, info)


def _dim_from_units(logp: np.ndarray, db: np.ndarray, root: Path) -> int:
    ok = np.abs(db) > 1e-9
    if not ok.any():
        raise ValueError(f"{root}: cannot tell the dimension d (no scores.json summary); pass --model")
    return round(float(np.median(10 * logp[ok] / (db[ok] * math.log(10)))))


@dataclass
class Images:
    """Images for a subset of keys, and the Haar participation ratio of every image found."""

    by_key: dict[str, np.ndarray]
    pr_by_key: dict[str, float]
    note: str = ""  # why images are missing, when they are


def read_images(data: str | Path | None, wanted: set[str], shape: Sequence[int] | None = None) -> Images:
    """Re-read the scored data (shard folder, .npy or image folder) piece by piece: keep the
    ``wanted`` images, compute the participation ratio of all. Never raises: failures become ``note``."""
    if not data:
        return Images({}, {}, "scores.json names no data and no --data was given")
    try:
        from dsm.scoring.inputs import open_input

        inp = open_input(data)
        by_key, pr = {}, {}
        for i in range(len(inp.pieces)):
            keys, x, _ = inp.read(i)
            if shape is not None and tuple(x.shape[1:]) != tuple(shape):
                x = x.reshape(len(x), *shape)
            image_like = figures.is_image_shape(x.shape[1:]) and min(x.shape[-2:]) >= 2
            if image_like:
                pr.update(zip(keys, ds.haar_participation_ratio(x).tolist()))
            for k, img in zip(keys, x):
                if k in wanted:
                    by_key[k] = np.array(img)
        note = ""
        if not figures.is_image_shape(inp.shape if shape is None else shape):
            note = f"the data {inp.path} holds vectors of shape {tuple(inp.shape)}, not images"
        elif wanted - by_key.keys():
            note = f"{len(wanted - by_key.keys())} of the scored keys are not in {inp.path}"
        return Images(by_key, pr, note)
    except (ValueError, FileNotFoundError, OSError) as e:
        return Images({}, {}, f"could not read the images from {data}: {e}")


def reference_rows(logp: np.ndarray, quantiles: Sequence[float] = REFERENCE_QUANTILES) -> list[int]:
    """Rows whose log p is nearest to the given quantiles: reference images spread evenly in log p."""
    order = np.argsort(logp, kind="stable")
    rows = [int(order[min(len(order) - 1, round(q * (len(order) - 1)))]) for q in quantiles]
    return list(dict.fromkeys(rows))  # distinct, in order


def build_report(scores_dir: str | Path, out: str | Path | None = None, *, top: int = 8, data: str | Path | None = None,
                 shape: Sequence[int] | None = None, d: int | None = None, tail: str = "right") -> dict:
    """Write the report folder; returns the metrics (also in ``metrics.json``), with ``folder``."""
    if top < 1:
        raise ValueError(f"--top must be >= 1, got {top}")
    sc = read_scores_dir(scores_dir, d)
    folder = Path(out).expanduser().resolve() if out else sc.root / "report"
    folder.mkdir(parents=True, exist_ok=True)
    k = min(top, sc.n)
    order = np.argsort(-sc.logp_nats, kind="stable")
    top_rows, bottom_rows = order[:k].tolist(), order[::-1][:k].tolist()
    refs = reference_rows(sc.logp_nats) if "deff_denoising" in sc.grids else []
    wanted = {sc.keys[r] for r in (*top_rows, *bottom_rows, *refs)}
    data = data or sc.info.get("options", {}).get("data")
    images = read_images(data, wanted, shape)

    metrics: dict = {"n": sc.n, "d": sc.d, "scores_dir": str(sc.root), "data": str(data) if data else None,
                     "nll_convention": "continuous (8-bit)" if sc.eight_bit else "plain"}
    md = [f"# dsm report: {sc.root.name}", "",
          f"- scores: `{sc.root}` ({sc.n} images, d = {sc.d} dimensions each)",
          f"- model: `{sc.info.get('options', {}).get('model', 'unknown')}`",
          f"- data: `{data or 'unknown'}`",
          "- units: log p in nats per image or dB/dim (10 log10 p / d); entropies per dimension. "
          + ("NLLs in the 8-bit 'continuous' convention, 8 - log p/(d ln 2) at x = k/255."
             if sc.eight_bit else "NLLs in the 'plain' convention, -log p/(d ln 2) (not 8-bit data)."), ""]
    md += _logp_section(sc, folder, tail, metrics)
    md += _entropy_section(sc, metrics)
    md += _extremes_section(sc, folder, top_rows, bottom_rows, images, metrics)
    md += _deff_section(sc, folder, refs, images, metrics)
    md += _sparsity_section(sc, folder, images, metrics)
    pngs = sorted(p.name for p in folder.glob("*.png"))
    md += ["## Files", "", f"- `{METRICS_FILE}`: every number above", *[f"- `{p}`" for p in pngs], ""]
    (folder / REPORT_FILE).write_text("\n".join(md))
    (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    return {**metrics, "folder": str(folder), "figures": pngs}


def _logp_section(sc: Scores, folder: Path, tail: str, metrics: dict) -> list[str]:
    from scipy import stats

    md = [SECTIONS[0], ""]
    skew = float(stats.skew(sc.logp_db)) if sc.n > 2 else float("nan")
    metrics["logp_db_per_dim"] = {"mean": float(sc.logp_db.mean()), "std": float(sc.logp_db.std(ddof=1)) if sc.n > 1 else 0.0,
                                  "min": float(sc.logp_db.min()), "max": float(sc.logp_db.max()), "skewness": skew}
    try:
        fit = ds.gumbel_fit(sc.logp_db, tail)
    except ValueError as e:
        fit = None
        md.append(f"No Gumbel fit: {e}.")
    figures.logp_histogram(sc.logp_db, fit, folder / "logp_hist.png")
    m = metrics["logp_db_per_dim"]
    md += ["![log p histogram](logp_hist.png)", "",
           f"log p over {sc.n} images: mean {m['mean']:.3f} dB/dim, std {m['std']:.3f}, "
           f"range [{m['min']:.3f}, {m['max']:.3f}], sample skewness {skew:+.3f}.", ""]
    if fit is not None:
        metrics["gumbel"] = fit.as_dict()
        md += ["| maximum-likelihood Gumbel fit | value |", "|---|---|",
               f"| tail | {fit.tail} (scipy.stats.gumbel_{'r' if fit.tail == 'right' else 'l'}) |",
               f"| location | {fit.loc:.4f} dB/dim |", f"| scale | {fit.scale:.4f} dB/dim |",
               f"| mean, std of the fit | {fit.mean:.4f}, {fit.std:.4f} dB/dim |",
               f"| Kolmogorov-Smirnov statistic | {fit.ks_stat:.4f} |",
               f"| KS p-value (parameters fitted on the same data: optimistic) | {fit.ks_pvalue:.3g} |", "",
               "A right-tailed Gumbel has skewness +1.14, a left-tailed one -1.14 (the paper's ImageNet64 fit "
               "is right-tailed: location 9.57, scale 3.17 dB/dim).", ""]
        if skew * (1 if fit.tail == "right" else -1) < 0:
            other = "left" if fit.tail == "right" else "right"
            md += [f"This sample is skewed the other way: `--gumbel-tail {other}` fits its orientation.", ""]
    return md


def _entropy_section(sc: Scores, metrics: dict) -> list[str]:
    e = ds.entropy_stats(sc.logp_nats, sc.d)
    metrics["entropy"] = e.as_dict()
    md = [SECTIONS[1], "",
          "| quantity | value |", "|---|---|",
          f"| mean log p | {e.mean_logp_nats:.3f} nats per image = {e.mean_logp_nats / sc.d:.5f} nats/dim "
          f"= {e.mean_logp_db_per_dim:.4f} dB/dim |",
          f"| differential entropy -E log p | {e.entropy_nats_per_dim:.5f} nats/dim = "
          f"{e.entropy_bits_per_dim:.5f} +- {e.stderr_bits_per_dim:.5f} bits/dim |"]
    if sc.eight_bit:
        md += [f"| discrete entropy of the 8-bit images, 8 + h (bits/dim) | {e.discrete_bits_per_dim:.5f} |",
               f"| typical images of this size, 2^(d H) | 10^{e.log10_typical_count:.1f} |"]
    else:
        md.append("| discrete entropy, typical set | not applicable: the data is not 8-bit images |")
        metrics["entropy"].pop("discrete_bits_per_dim")
        metrics["entropy"].pop("log10_typical_count")
    md += ["", "The differential entropy is a cross-entropy: an upper bound on the data's entropy for a "
           "normalized model. The discrete entropy uses the 8-bit 'continuous' convention (the mean `nll_bpd`).", ""]
    return md


def _missing(images: Images, what: str) -> list[str]:
    return [f"Images not available, so no {what}: {images.note or 'not found'}.", ""]


def _extremes_section(sc: Scores, folder: Path, top_rows: list[int], bottom_rows: list[int], images: Images,
                      metrics: dict) -> list[str]:
    e = metrics["entropy"]
    md = [SECTIONS[2], "",
          f"The most probable image is 10^{e['log10_max_min_ratio']:.1f} times as probable as the least probable "
          f"one ((max log p - min log p) / ln 10, over {sc.n} images).", ""]
    for name, rows in (("most", top_rows), ("least", bottom_rows)):
        keys = [sc.keys[r] for r in rows]
        metrics[f"{name}_probable_keys"] = keys
        if all(k in images.by_key for k in keys):
            path = f"{name}_probable.png"
            figures.image_grid(np.stack([images.by_key[k] for k in keys]), folder / path,
                               [f"{sc.logp_db[r]:.2f}" for r in rows],
                               suptitle=f"{len(rows)} {name} probable (log p in dB/dim)")
            md += [f"**{len(rows)} {name} probable** (log p in dB/dim above each):", "", f"![{name} probable]({path})", ""]
        else:
            md += [f"**{len(rows)} {name} probable**: keys {', '.join(f'`{k}`' for k in keys)}.", ""]
            md += _missing(images, "image grid")
    return md


def _deff_section(sc: Scores, folder: Path, refs: list[int], images: Images, metrics: dict) -> list[str]:
    md = [SECTIONS[3], ""]
    if "deff_denoising" not in sc.grids or "deff_time" not in sc.grids or not len(sc.t_grid):
        return md + ["No d_eff columns: the scores were computed with an empty t grid (`--t-grid ''`).", ""]
    a, b, t = sc.grids["deff_denoising"], sc.grids["deff_time"], sc.t_grid
    gap = b - a
    gap_mean = gap.mean(0)
    gap_se = gap.std(0, ddof=1) / math.sqrt(sc.n) if sc.n > 1 else np.zeros_like(gap_mean)
    labels = [f"{sc.keys[r]}: {sc.logp_db[r]:.2f} dB/dim" for r in refs]
    figures.deff_bands(t, a, b, sc.d, refs, labels, folder / "deff.png")
    figures.deff_gap(t, gap_mean, gap_se, sc.d, folder / "deff_gap.png")
    metrics["d_eff"] = [{"t": float(t[i]), "denoising_mean": float(a[:, i].mean()), "time_mean": float(b[:, i].mean()),
                         "denoising_p10": float(np.percentile(a[:, i], 10)),
                         "denoising_p90": float(np.percentile(a[:, i], 90)),
                         "gap_mean": float(gap_mean[i]), "gap_stderr": float(gap_se[i])} for i in range(len(t))]
    metrics["d_eff_reference_keys"] = [sc.keys[r] for r in refs]
    md += [f"d_eff against the noise variance t (d = {sc.d}): the data set's mean by the denoising estimator "
           "E||x - D||^2 / t (solid) and the time-score estimator (dashed), its 10-90 and 25-75 percentile bands, "
           f"and {len(refs)} reference images at log p quantiles {', '.join(f'{q:g}' for q in REFERENCE_QUANTILES)} "
           "(dotted).", "", "![d_eff](deff.png)", ""]
    if all(sc.keys[r] in images.by_key for r in refs):
        figures.image_grid(np.stack([images.by_key[sc.keys[r]] for r in refs]), folder / "deff_reference_images.png",
                           [f"{sc.logp_db[r]:.2f}" for r in refs], suptitle="reference images (log p, dB/dim)")
        md += ["![reference images](deff_reference_images.png)", ""]
    else:
        md += _missing(images, "reference image thumbnails")
    md += ["The gap between the two estimators (time-score minus denoising, per dimension, 2 standard errors): "
           "they agree for a density that obeys the heat equation, so the gap is a self-consistency check.", "",
           "![estimator gap](deff_gap.png)", "",
           "| t | d_eff denoising | d_eff time score | gap +- stderr |", "|---|---|---|---|"]
    md += [f"| {r['t']:.3g} | {r['denoising_mean']:.3f} | {r['time_mean']:.3f} | {r['gap_mean']:+.3f} +- "
           f"{r['gap_stderr']:.3f} |" for r in metrics["d_eff"]]
    return md + [""]


def _sparsity_section(sc: Scores, folder: Path, images: Images, metrics: dict) -> list[str]:
    md = [SECTIONS[4], ""]
    rows = [i for i, k in enumerate(sc.keys) if k in images.pr_by_key]
    if len(rows) < 3:
        return md + _missing(images, "participation ratios")
    pr = np.array([images.pr_by_key[sc.keys[i]] for i in rows])
    db = sc.logp_db[rows]
    rho, p = ds.spearman(pr, db)
    figures.logp_vs_sparsity(pr, db, rho, folder / "logp_vs_sparsity.png")
    metrics["sparsity"] = {"n": len(rows), "spearman_rho": rho, "spearman_pvalue": p,
                           "pr_mean": float(pr.mean()), "pr_median": float(np.median(pr))}
    md += ["Participation ratio of the Haar wavelet detail coefficients c of each image (all levels and channels; "
           "the coarse approximation left out): PR = (sum c^2)^2 / (N sum c^4), N the number of coefficients, so "
           "PR is in [1/N, 1]; about 1/3 for white noise, small for sparse images, 0 for a constant image.", "",
           "![log p against sparsity](logp_vs_sparsity.png)", "",
           f"Spearman rank correlation between PR and log p: rho = {rho:.4f} (p = {p:.3g}, {len(rows)} images"
           + (f"; {sc.n - len(rows)} scored images not found in the data" if len(rows) < sc.n else "") + ").", ""]
    return md
