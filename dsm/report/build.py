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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dsm.plumbing.store import Location
from dsm.report import baselines as rb
from dsm.report import figures
from dsm.report.scores import Scores, iter_pieces, read_scores_dir
from dsm.stats import density as ds

if TYPE_CHECKING:
    import torch


REPORT_FILE, METRICS_FILE = "report.md", "metrics.json"
REFERENCE_QUANTILES = (0.02, 0.25, 0.5, 0.75, 0.98)  # log p quantiles of the d_eff reference images

N_REFERENCES = 15  # the paper's reference images, evenly spaced in log p (Fig. 5)
AVERAGE_IMAGES = 256  # images behind the data-average curve of E[log p(y, t) | x], one draw each
NOISY_T_POINTS = 25  # noise variances, log-spaced over the model's training range
UNIFORM_NOISE_IMAGES = 100  # the paper's uniform-noise marker is the mean over 100 images

SECTIONS = (
    "## Distribution of log p",
    "## Entropy and the typical set",
    "## Most and least probable images",
    "## Effective dimensionality",
    "## Sparsity: log p against the Haar participation ratio",
    "## Train against test cross-entropy",
    "## Probability under affine transforms",
    "## Log probability along the noise",
    "## Classical baselines",
)


@dataclass
class Studies:
    """What the model-based sections need: the model (``dsm.api.Model``, normalized), how many
    reference images, noise draws and grid points, and the t range of E[log p(y, t) | x]."""

    model: object | None = None
    n_refs: int = N_REFERENCES
    n_noise: int = 16
    affine_grid: int = 21
    t_range: tuple[float, float] | None = None


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
        from dsm.data.inputs import open_input

        inp = open_input(data)
        by_key, pr = {}, {}
        for keys, x in iter_pieces(inp, shape):
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


def _check_studies(studies: Studies, top: int) -> None:
    if top < 1:
        raise ValueError(f"--top must be >= 1, got {top}")
    if studies.n_refs < 1 or studies.n_noise < 1 or studies.affine_grid < 2:
        raise ValueError(f"need --ref-images >= 1, --n-noise >= 1 and --affine-grid >= 2; got {studies.n_refs}, "
                         f"{studies.n_noise}, {studies.affine_grid}")


def default_report_folder(scores: Path | Location) -> Path:
    """SCORES_DIR/report; for scores at a URL, ``./report-<name>`` here (a report is read by
    people, on this machine)."""
    return scores / "report" if isinstance(scores, Path) else Path.cwd() / f"report-{scores.name}"


def build_report(scores_dir: str | Path, out: str | Path | None = None, *, top: int = 8, data: str | Path | None = None,
                 shape: Sequence[int] | None = None, d: int | None = None, tail: str = "right",
                 train_scores: str | Path | None = None, studies: Studies | None = None,
                 baselines: rb.BaselineOptions | None = None) -> dict:
    """Write the report folder; returns the metrics (also in ``metrics.json``), with ``folder``.

    train_scores: a second ``dsm score`` folder, of training images, for the cross-entropy gap;
    studies: the model and settings of the model-based sections (none without a model);
    baselines: the classical baselines to fit and compare (none by default)."""
    studies = studies or Studies()
    _check_studies(studies, top)
    baselines = baselines or rb.BaselineOptions()
    sc = read_scores_dir(scores_dir, d)
    train = read_scores_dir(train_scores, sc.d) if train_scores else None
    fitted = rb.fit(baselines, sc.d)  # before anything is written: a bad training split fails here
    folder = Path(out).expanduser().resolve() if out else default_report_folder(sc.root)
    folder.mkdir(parents=True, exist_ok=True)
    k = min(top, sc.n)
    order = np.argsort(-sc.logp_nats, kind="stable")
    top_rows, bottom_rows = order[:k].tolist(), order[::-1][:k].tolist()
    refs = reference_rows(sc.logp_nats) if "deff_denoising" in sc.grids else []
    paper_refs = ds.rows_evenly_spaced_in_value(sc.logp_nats, studies.n_refs) if studies.model is not None else []
    avg_rows = _average_rows(sc.n) if studies.model is not None else []
    wanted = {sc.keys[r] for r in (*top_rows, *bottom_rows, *refs, *paper_refs, *avg_rows)}
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
    md += _logp_section(sc, folder, tail, metrics, _markers(studies.model, metrics))
    md += _entropy_section(sc, metrics)
    md += _cross_entropy_section(sc, train, metrics)
    md += rb.section(sc, folder, fitted, baselines, data, shape, metrics)
    md += _extremes_section(sc, folder, top_rows, bottom_rows, images, metrics)
    md += _deff_section(sc, folder, refs, images, metrics)
    md += _sparsity_section(sc, folder, images, metrics)
    md += _affine_section(sc, folder, paper_refs, images, studies, metrics)
    md += _noisy_section(sc, folder, paper_refs, avg_rows, images, studies, metrics)
    pngs = sorted(p.name for p in folder.glob("*.png"))
    md += ["## Files", "", f"- `{METRICS_FILE}`: every number above", *[f"- `{p}`" for p in pngs], ""]
    (folder / REPORT_FILE).write_text("\n".join(md))
    (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    return {**metrics, "folder": str(folder), "figures": pngs}


def _logp_section(sc: Scores, folder: Path, tail: str, metrics: dict, markers: dict[str, float]) -> list[str]:
    from scipy import stats

    md = [SECTIONS[0], ""]
    skew = float(stats.skew(sc.logp_db)) if sc.n > 2 else float("nan")
    metrics["logp_db_per_dim"] = {"mean": float(sc.logp_db.mean()),
                                  "std": float(sc.logp_db.std(ddof=1)) if sc.n > 1 else 0.0,
                                  "min": float(sc.logp_db.min()), "max": float(sc.logp_db.max()), "skewness": skew}
    try:
        fit, gev = ds.gumbel_fit(sc.logp_db, tail), ds.gev_fit(sc.logp_db, tail)
    except ValueError as e:
        fit = gev = None
        md.append(f"No Gumbel or GEV fit: {e}.")
    figures.logp_histogram(sc.logp_db, fit, folder / "logp_hist.png", gev, markers)
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
        md += _gev_lines(fit, gev, metrics)
    md += _marker_lines(metrics.get("markers"))
    return md


def _gev_lines(fit: ds.GumbelFit, gev: ds.GEVFit, metrics: dict) -> list[str]:
    """The GEV fit beside the Gumbel, and the Frechet law of p^(1/d) that the Gumbel fit implies."""
    metrics["gev"] = gev.as_dict()
    kind = "Frechet" if gev.xi > 0 else "Weibull"
    md = ["| maximum-likelihood GEV fit (scipy.stats.genextreme, dashed) | value |", "|---|---|",
          f"| shape xi = -c ({kind} type; 0 is the Gumbel) | {gev.xi:+.4f} |",
          f"| location, scale | {gev.loc:.4f}, {gev.scale:.4f} dB/dim |",
          f"| Kolmogorov-Smirnov statistic (Gumbel's: {fit.ks_stat:.4f}) | {gev.ks_stat:.4f} |", ""]
    if fit.tail == "right":
        # A Gumbel law of 10 log10(p)/d is a Frechet law of p^(1/d) (the paper's energy_histogram notebook).
        scale, shape = 10 ** (fit.loc / 10), 10 / (fit.scale * math.log(10))
        metrics["gumbel"].update({"frechet_scale_p_per_dim": scale, "frechet_shape_p_per_dim": shape})
        md += [f"The Gumbel fit means p^(1/d) is Frechet with scale 10^(loc/10) = {scale:.4g} and shape "
               f"10/(scale ln 10) = {shape:.4g} (from the paper's loc 9.57 and scale 3.17: 9.06 and 1.37).", ""]
    return md


def _markers(model, metrics: dict) -> dict[str, float]:
    """The histogram's markers (dB/dim), for an image model: the best constant image and the
    mean of uniform-noise images. Stored under ``markers`` in ``metrics``."""
    if model is None or not getattr(model, "normalized", False) or not figures.is_image_shape(model.shape):
        return {}
    from dsm.stats.studies import best_constant_image, uniform_noise_logp

    energy = model.energy_model
    c, best = best_constant_image(energy, dtype=_dtype(energy))
    noise = uniform_noise_logp(energy, UNIFORM_NOISE_IMAGES, seed=0, dtype=_dtype(energy))
    metrics["markers"] = {"best_constant_value": c, "best_constant_logp_db_per_dim": best,
                          "uniform_noise_logp_db_per_dim_mean": float(noise.mean()),
                          "uniform_noise_logp_db_per_dim_std": float(noise.std(ddof=1)), "uniform_noise_n": len(noise)}
    return {f"best constant image (c = {c:.3f})": best, f"uniform noise (mean of {len(noise)})": float(noise.mean())}


def _dtype(energy) -> torch.dtype:
    """The model's parameter dtype (float32 for an exact density without parameters)."""
    import torch

    return next(energy.parameters(), torch.empty(0)).dtype


def _marker_lines(m: dict | None) -> list[str]:
    if not m:
        return ["Markers of the best constant image and of uniform noise: need `--model`, a normalized image "
                "model.", ""]
    return [f"Markers (dotted): the most probable constant image c 1 (c in [0, 1]) is c = "
            f"{m['best_constant_value']:.4f} at {m['best_constant_logp_db_per_dim']:.3f} dB/dim; "
            f"{m['uniform_noise_n']} images of uniform noise have mean log p "
            f"{m['uniform_noise_logp_db_per_dim_mean']:.3f} dB/dim (std {m['uniform_noise_logp_db_per_dim_std']:.3f}).",
            ""]


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
            md += [f"**{len(rows)} {name} probable** (log p in dB/dim above each):", "",
                   f"![{name} probable]({path})", ""]
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
    from scipy import stats

    md = [SECTIONS[4], ""]
    rows = [i for i, k in enumerate(sc.keys) if k in images.pr_by_key]
    if len(rows) < 3:
        return md + _missing(images, "participation ratios")
    pr = np.array([images.pr_by_key[sc.keys[i]] for i in rows])
    db = sc.logp_db[rows]
    rho, p = ds.spearman(pr, db)
    line = stats.linregress(pr, db) if np.ptp(pr) > 0 else None
    figures.logp_vs_sparsity(pr, db, rho, folder / "logp_vs_sparsity.png",
                             (line.slope, line.intercept) if line is not None else None)
    metrics["sparsity"] = {"n": len(rows), "spearman_rho": rho, "spearman_pvalue": p,
                           "pr_mean": float(pr.mean()), "pr_median": float(np.median(pr)), "measure": "paper"}
    if line is not None:
        metrics["sparsity"].update({"slope_db_per_dim": float(line.slope),
                                    "intercept_db_per_dim": float(line.intercept)})
    md += ["The paper's participation ratio of each image's Haar coefficients c, all N of them (every level, the "
           "coarse approximation included, every channel; level j divided by 2^j as in the paper's notebook): "
           "PR = (sum |c|)^2 / (N sum c^2), in [1/N, 1]: 1/N for a constant image, small for sparse images "
           "(`dsm.stats.density.haar_participation_ratio`).", "",
           "![log p against sparsity](logp_vs_sparsity.png)", "",
           f"Spearman rank correlation between PR and log p: rho = {rho:.4f} (p = {p:.3g}, {len(rows)} images"
           + (f"; {sc.n - len(rows)} scored images not found in the data" if len(rows) < sc.n else "") + ")"
           + (f"; least-squares slope {line.slope:.3f} dB/dim per unit of PR." if line is not None else "."), ""]
    return md


def _cross_entropy_section(sc: Scores, train: Scores | None, metrics: dict) -> list[str]:
    """The paper's Table 2: mean NLL on training and on test images, and the gap."""
    md = [SECTIONS[5], ""]
    if train is None:
        return md + ["No training-set scores: pass `--train-scores DIR`, a `dsm score` folder of training images "
                     "scored by the same model.", ""]
    if train.d != sc.d or train.eight_bit != sc.eight_bit:
        raise ValueError(f"{train.root}: d = {train.d} ({'8-bit' if train.eight_bit else 'plain'} NLL) does not match "
                         f"the test scores' d = {sc.d} ({'8-bit' if sc.eight_bit else 'plain'})")
    gap = ds.train_test_cross_entropy(train.nll_bpd, sc.nll_bpd)
    metrics["cross_entropy"] = {**gap.as_dict(), "train_scores_dir": str(train.root)}
    md += ["| images | n | NLL (bits/dim) |", "|---|---|---|",
           f"| train (`{train.root.name}`) | {gap.n_train} | {gap.train_bpd:.4f} +- {gap.train_stderr:.4f} |",
           f"| test (`{sc.root.name}`) | {gap.n_test} | {gap.test_bpd:.4f} +- {gap.test_stderr:.4f} |",
           f"| test - train | | {gap.gap_bpd:+.4f} +- {gap.gap_stderr:.4f} |", "",
           "NLL in the convention stated above; +- one standard error over images. A gap near 0 means the model "
           "generalizes rather than memorizes its training images.", ""]
    return md


def _average_rows(n: int) -> list[int]:
    """Rows spread evenly over the key-sorted table, for the data-average curve."""
    return sorted(set(np.linspace(0, n - 1, min(n, AVERAGE_IMAGES)).round().astype(int).tolist()))


def _study_inputs(sc: Scores, rows: list[int], images: Images, studies: Studies):
    """(energy, images in the model's input shape) for these rows, or a reason why not."""
    import torch

    model = studies.model
    if model is None:
        return None, "need `--model` (the scored model, normalized)"
    if not getattr(model, "normalized", False):
        return None, "the model is not normalized (run `dsm normalize`)"
    if not rows or not all(sc.keys[r] in images.by_key for r in rows):
        return None, f"images not available: {images.note or 'not found'}"
    x = torch.from_numpy(np.stack([images.by_key[sc.keys[r]] for r in rows])).to(_dtype(model.energy_model))
    return model.energy_model, model.to_model(x.reshape(len(rows), *model.shape))


def _ref_labels(sc: Scores, rows: list[int]) -> list[str]:
    return [f"{sc.logp_db[r]:.2f} dB/dim" for r in rows]


def _affine_section(sc: Scores, folder: Path, rows: list[int], images: Images, studies: Studies,
                    metrics: dict) -> list[str]:
    """Fig. 4: log p(a x + b) over contrast a and offset b in [0, 1], for the reference images."""
    from dsm.stats.studies import logp_affine

    md = [SECTIONS[6], ""]
    energy, x = _study_inputs(sc, rows, images, studies)
    if energy is None:
        return md + [f"No affine study: {x}.", ""]
    grid = np.linspace(0, 1, studies.affine_grid)
    logp = logp_affine(energy, x, grid, grid)
    heat = len(rows) // 2
    figures.logp_affine(grid, grid, logp, _ref_labels(sc, rows), heat, folder / "logp_affine.png")
    np.savez(folder / "logp_affine.npz", a=grid, b=grid, logp_db_per_dim=logp,
             keys=np.array([sc.keys[r] for r in rows]))
    j = int(np.argmin(np.abs(grid - 0.5)))
    best = [np.unravel_index(np.argmax(m), m.shape) for m in logp]
    metrics["affine"] = {"keys": [sc.keys[r] for r in rows], "a": grid.tolist(), "b_contrast_curve": float(grid[j]),
                         "contrast_curve_db_per_dim": logp[:, j].tolist(),
                         "best_a": [float(grid[k]) for _, k in best], "best_b": [float(grid[i]) for i, _ in best],
                         "file": "logp_affine.npz"}
    return md + [f"log p(a x + b) in dB/dim for the {len(rows)} reference images evenly spaced in log p (as the paper "
                 f"picks them), a and b on a {studies.affine_grid}-point grid of [0, 1] (the paper's: 101). Left: "
                 f"against the contrast a at b = {grid[j]:.2f}; right: the (a, b) map of the median reference image, "
                 "blank where a + b > 1. Every value is in `logp_affine.npz`.", "",
                 "![log p under affine transforms](logp_affine.png)", ""]


def _noisy_section(sc: Scores, folder: Path, rows: list[int], avg_rows: list[int], images: Images,
                   studies: Studies, metrics: dict) -> list[str]:
    """Fig. 5 left: E[log p(y, t) | x] against t for the reference images and the data average."""
    from dsm.stats.studies import noisy_logp

    md = [SECTIONS[7], ""]
    energy, x = _study_inputs(sc, rows, images, studies)
    if energy is None or studies.t_range is None:
        return md + [f"No noisy log p study: {x if energy is None else 'no t range (pass the model file)'}.", ""]
    t = np.geomspace(*studies.t_range, NOISY_T_POINTS)
    refs = noisy_logp(energy, x, t, studies.n_noise, keys=[sc.keys[r] for r in rows])
    avg_energy, xa = _study_inputs(sc, avg_rows, images, studies)
    avg = noisy_logp(energy, xa, t, 1, keys=[sc.keys[r] for r in avg_rows]).mean.mean(0) if avg_energy else None
    labels = _ref_labels(sc, rows)
    figures.noisy_logp(t, refs.mean, labels, folder / "logp_noisy.png", avg, studies.t_range[0])
    figures.image_grid(np.stack([images.by_key[sc.keys[r]] for r in rows]), folder / "logp_reference_images.png",
                       labels, suptitle="reference images, evenly spaced in log p (dB/dim)")
    metrics["noisy_logp"] = {"keys": [sc.keys[r] for r in rows], "t": t.tolist(), "n_noise": studies.n_noise,
                             "mean_db_per_dim": refs.mean.tolist(), "stderr_db_per_dim": refs.stderr.tolist(),
                             "average_db_per_dim": None if avg is None else avg.tolist(),
                             "average_images": 0 if avg is None else len(avg_rows)}
    return md + [f"E[log p(y, t) | x] in dB/dim, y = x + sqrt(t) z, averaged over {studies.n_noise} noise draws per "
                 f"image (`--n-noise`; the paper: 1000), at {NOISY_T_POINTS} noise variances over the model's "
                 f"training range (gray line: t_min), for the {len(rows)} reference images and, dashed, the mean over "
                 f"{len(avg_rows)} scored images with one draw each. log p(y, t) = -U(y, t) - log Z.", "",
                 "![log p along the noise](logp_noisy.png)", "", "![reference images](logp_reference_images.png)", ""]
