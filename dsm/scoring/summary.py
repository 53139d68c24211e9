"""The summary of a scores table, and its figures (no Ray, no MLflow).

- ``nll_bpd_mean`` with its standard error over images, ``logp_nats_mean``;
- quantiles of log p (nats and dB/dim);
- the d_eff estimators' gap at each t: mean of (time - denoising), its standard error, and the
  mean of each estimator, so a reader sees the gap next to the values it separates.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)


def summarize(table, t_grid, dim: int) -> dict:
    """A JSON-able summary of a scores table (pyarrow) with the given t grid."""
    logp = np.asarray(table.column("logp_nats").to_numpy(), dtype=np.float64)
    nll = np.asarray(table.column("nll_bpd").to_numpy(), dtype=np.float64)
    db = np.asarray(table.column("logp_db_per_dim").to_numpy(), dtype=np.float64)
    n = len(logp)
    out = {
        "n": n, "dim": dim,
        "nll_bpd_mean": float(nll.mean()), "nll_bpd_stderr": float(nll.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
        "logp_nats_mean": float(logp.mean()),
        "logp_nats_quantiles": {str(q): float(np.quantile(logp, q)) for q in QUANTILES},
        "logp_db_per_dim_quantiles": {str(q): float(np.quantile(db, q)) for q in QUANTILES},
    }
    if "nll_bpd_dequantized" in table.column_names:
        v = np.asarray(table.column("nll_bpd_dequantized").to_numpy(), dtype=np.float64)
        out["nll_bpd_dequantized_mean"] = float(v.mean())
    if len(t_grid):
        a, b = _grid(table, "deff_denoising"), _grid(table, "deff_time")
        gap = b - a
        out["d_eff"] = [{"t": float(t), "denoising_mean": float(a[:, i].mean()), "time_mean": float(b[:, i].mean()),
                         "gap_mean": float(gap[:, i].mean()),
                         "gap_stderr": float(gap[:, i].std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0}
                        for i, t in enumerate(t_grid)]
        out["d_eff_max_abs_gap_over_d"] = float(np.abs(gap.mean(0)).max() / dim)
    return out


def _grid(table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_pylist(), dtype=np.float64)


def format_summary(s: dict) -> str:
    lines = [f"{s['n']} images, d = {s['dim']}: NLL {s['nll_bpd_mean']:.4f} +- {s['nll_bpd_stderr']:.4f} bits/dim, "
             f"mean log p {s['logp_nats_mean']:.2f} nats"]
    q = s["logp_db_per_dim_quantiles"]
    lines.append("log p quantiles (dB/dim): " + ", ".join(f"{float(k):g}: {v:.3f}" for k, v in q.items()))
    if "nll_bpd_dequantized_mean" in s:
        lines.append(f"dequantized NLL {s['nll_bpd_dequantized_mean']:.4f} bits/dim")
    for row in s.get("d_eff", []):
        lines.append(f"d_eff at t={row['t']:.3g}: denoising {row['denoising_mean']:.3f}, time {row['time_mean']:.3f}, "
                     f"gap {row['gap_mean']:+.3f} +- {row['gap_stderr']:.3f}")
    return "\n".join(lines)


def figures(table, t_grid, out_dir: Path) -> list[Path]:
    """PNGs: the histogram of log p (dB/dim, log-frequency axis) and mean d_eff against t."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    db = np.asarray(table.column("logp_db_per_dim").to_numpy(), dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(db, bins=min(60, max(10, len(db) // 20)), log=True, color="tab:blue")
    ax.set_xlabel("log p (dB/dim)")
    ax.set_ylabel("images")
    ax.set_title(f"log p of {len(db)} images")
    fig.tight_layout()
    paths.append(out_dir / "logp_hist.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    if len(t_grid):
        a, b = _grid(table, "deff_denoising"), _grid(table, "deff_time")
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(t_grid, a.mean(0), "o-", label="denoising estimator")
        ax.plot(t_grid, b.mean(0), "s--", label="time-score estimator")
        ax.set_xscale("log")
        ax.set_xlabel("noise variance t")
        ax.set_ylabel("mean d_eff")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out_dir / "d_eff.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths
