"""Study 05: effective dimensionality d_eff(x, t) on held-out images, by both estimators.

    .venv/bin/python analysis/05-deff/run.py [--config config.yaml]

Trains (or reuses) study 04's model, scores the held-out split on a dense t grid (dsm score
--t-grid, both d_eff estimators with their Monte Carlo errors), runs dsm report, and then
summarizes from the parquet: the mean d_eff curve by each estimator, the spread across images
at small t (is there *one* manifold dimension?), and the gap between the estimators.
Writes results.json and deff.png beside this script.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(HERE / "config.yaml"))
    args = ap.parse_args()
    cfg = yaml.safe_load(Path(args.config).read_text())
    logs = common.WORKSPACE / "logs" / "05"
    train_cfg = (Path(args.config).parent / cfg["train_config"]).resolve()
    model = common.train(train_cfg, *cfg.get("train_overrides", []), log=logs / "train.log")
    test = common.test_split(model)
    grid_tag = cfg["t_grid"].replace(":", "_")
    scores = common.WORKSPACE / "scores" / f"05-{model.parent.name}-{grid_tag}-K{cfg['noise_samples']}"
    common.score(model, test, scores, "--t-grid", cfg["t_grid"], "--noise-samples", str(cfg["noise_samples"]),
                 *cfg.get("score_args", []), log=logs / "score.log")
    folder = common.report(scores, "--model", str(model), log=logs / "report.log")
    result = summarize(scores, cfg["small_t_count"])
    result.update(model=str(model), data=str(test), report=str(folder), t_grid_option=cfg["t_grid"],
                  noise_samples=cfg["noise_samples"],
                  paper={"data": "ImageNet64 test set", "d": 4096, "mean_deff_t1e-9": 3989, "mean_deff_t0.04": 417,
                         "range_small_t": [1030, 4100]})
    common.write_json(HERE / "results.json", result)
    print(json.dumps({k: result[k] for k in ("d", "small_t", "gap_summary")}, indent=1))
    print(HERE / "results.json")


def summarize(scores: Path, n_small: int) -> dict:
    import pandas as pd

    info = json.loads((scores / "scores.json").read_text())
    df = pd.read_parquet(scores / "parts")
    t = np.asarray(info["options"]["t_grid"], dtype=float)
    a = np.stack(df["deff_denoising"].to_numpy())  # (n, T)
    b = np.stack(df["deff_time"].to_numpy())
    sa = np.stack(df["deff_denoising_stderr"].to_numpy())
    d = int(round(df["logp_nats"].iloc[0] / df["logp_db_per_dim"].iloc[0] * 10 / np.log(10)))
    n = len(df)
    gap = b - a
    curve = []
    for i, ti in enumerate(t):
        curve.append({"t": float(ti), "psnr_db": float(-10 * np.log10(ti)),
                      "denoising_mean": float(a[:, i].mean()), "time_mean": float(b[:, i].mean()),
                      "denoising_p5": float(np.percentile(a[:, i], 5)),
                      "denoising_p95": float(np.percentile(a[:, i], 95)),
                      "denoising_min": float(a[:, i].min()), "denoising_max": float(a[:, i].max()),
                      "denoising_std_across_images": float(a[:, i].std(ddof=1)),
                      "denoising_mc_stderr_median": float(np.median(sa[:, i])),
                      "gap_time_minus_denoising_mean": float(gap[:, i].mean()),
                      "gap_stderr": float(gap[:, i].std(ddof=1) / np.sqrt(n)),
                      "gap_rms_per_image": float(np.sqrt((gap[:, i] ** 2).mean()))})
    small = []
    for i in range(min(n_small, len(t))):
        r = np.corrcoef(a[:, i], df["logp_db_per_dim"].to_numpy())[0, 1]
        small.append({"t": float(t[i]), "mean": float(a[:, i].mean()), "min": float(a[:, i].min()),
                      "p5": float(np.percentile(a[:, i], 5)), "median": float(np.median(a[:, i])),
                      "p95": float(np.percentile(a[:, i], 95)), "max": float(a[:, i].max()),
                      "corr_with_logp_db": float(r)})
    rel = np.abs(gap.mean(0)) / np.maximum(a.mean(0), 1e-12)
    gap_summary = {"max_abs_mean_gap": float(np.abs(gap.mean(0)).max()),
                   "t_at_max_abs_mean_gap": float(t[np.argmax(np.abs(gap.mean(0)))]),
                   "max_abs_mean_gap_over_d": float(np.abs(gap.mean(0)).max() / d),
                   "median_relative_gap": float(np.median(rel)),
                   "n_t_beyond_3_stderr": int((np.abs(gap.mean(0)) > 3 * gap.std(0, ddof=1) / np.sqrt(n)).sum())}
    _figure(HERE / "deff.png", t, a, b, d, df["logp_db_per_dim"].to_numpy())
    return {"n": n, "d": d, "curve": curve, "small_t": small, "gap_summary": gap_summary}


def _figure(path: Path, t, a, b, d, logp_db) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax = axes[0]
    ax.fill_between(t, np.percentile(a, 5, 0), np.percentile(a, 95, 0), color="C0", alpha=0.2, label="5-95 % of images")
    ax.semilogx(t, a.mean(0), "C0-", lw=2, label="mean, denoising estimator")
    ax.semilogx(t, b.mean(0), "C1--", lw=2, label="mean, time-score estimator")
    ax.axhline(d, color="k", lw=0.8, ls=":")
    ax.set(xlabel="noise variance t", ylabel="d_eff", title=f"d_eff against t (d = {d})", ylim=(0, d * 1.1))
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.semilogx(t, (b - a).mean(0), "k-")
    se = (b - a).std(0, ddof=1) / np.sqrt(len(a))
    ax.fill_between(t, (b - a).mean(0) - 2 * se, (b - a).mean(0) + 2 * se, color="0.7")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="noise variance t", ylabel="time-score minus denoising", title="estimator gap (mean +- 2 s.e.)")
    ax = axes[2]
    sc = ax.scatter(a[:, 0], logp_db, s=6, c=a[:, 0], cmap="viridis")
    ax.set(xlabel=f"d_eff at t = {t[0]:.0e} (denoising)", ylabel="log p (dB/dim)",
           title="spread across images at small t")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    del sc


if __name__ == "__main__":
    main()
