"""The summary of a scores table, and its figures (no Ray, no MLflow).

- ``nll_bpd_mean`` with its standard error over images, ``logp_nats_mean``;
- quantiles of log p (nats and dB/dim);
- the d_eff estimators' gap at each t: mean of (time - denoising), its standard error, and the
  mean of each estimator, so a reader sees the gap next to the values it separates;
- the model's self-consistency (:func:`consistency_summary`, :mod:`dsm.core.consistency`) on the
  first examples, with a warning line for each metric beyond its bound.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dsm.core import consistency as cons

QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)


def summarize(table, t_grid, dim: int) -> dict:
    """A JSON-able summary of a scores table (pyarrow) with the given t grid."""
    logp = np.asarray(table.column("logp_nats").to_numpy(), dtype=np.float64)
    # A row the model scores as NaN or Inf is counted and named, never averaged into the summary
    ok = np.isfinite(logp)
    keys = table.column("key").to_pylist()
    bad = [keys[i] for i in np.flatnonzero(~ok)]
    table = table.filter(ok) if len(bad) else table
    logp = logp[ok]
    nll = np.asarray(table.column("nll_bpd").to_numpy(), dtype=np.float64)
    db = np.asarray(table.column("logp_db_per_dim").to_numpy(), dtype=np.float64)
    n = len(logp)
    if n == 0:
        raise ValueError(f"every one of the {len(bad)} scored rows has a non-finite log p "
                         f"(first keys: {', '.join(bad[:5])})")
    out = {
        "n": n, "dim": dim, "non_finite_rows": len(bad), "non_finite_keys": bad[:5],
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


def consistency_summary(energy, x, keys, *, band_edges: list[float], options: cons.Options) -> dict:
    """The consistency metrics of ``energy`` (a :class:`dsm.core.energy.Energy`) on x (N, *event_shape)
    with its keys, the heat bands ``band_edges``; JSON-able, with the warning lines."""
    metrics = cons.check(energy, x, keys, band_edges=band_edges, options=options).metrics()
    return {"n": int(x.shape[0]), "t_min": band_edges[0], "t_max": band_edges[-1], "ode_images": options.ode_images,
            "ode_steps": options.ode_steps, "metrics": metrics, "warnings": cons.out_of_bounds(metrics)}


def _format_consistency(c: dict) -> list[str]:
    """The consistency block of :func:`format_summary`: values next to their bounds, then warnings."""
    m, p = c["metrics"], cons.PREFIX
    ts = sorted(((k[len(p + "log_z_nats_t"):], v) for k, v in m.items() if k.startswith(p + "log_z_nats_t")),
                key=lambda a: float(a[0]))
    lines = [f"consistency ({c['n']} images): log Z " + ", ".join(f"{v:.3f} at t={t}" for t, v in ts)
             + f"; spread {m[p + 'log_z_spread_nats']:.3f} nats (bound {cons.LOG_Z_SPREAD_MAX_NATS:g})"]
    if p + "ode_gap_nats_per_dim" in m:
        lines.append(f"energy - PF-ODE log p: {m[p + 'ode_gap_nats_per_dim']:+.4f} +- "
                     f"{m[p + 'ode_gap_stderr_nats_per_dim']:.4f} nats/dim, mean |gap| "
                     f"{m[p + 'ode_gap_abs_nats_per_dim']:.4f} (bound {cons.ODE_GAP_ABS_MAX_NATS_PER_DIM:g}; "
                     f"{c['ode_images']} images, {c['ode_steps']} Heun steps)")
    bands = sorted((int(k.rsplit("band", 1)[1]), v) for k, v in m.items()
                   if k.startswith(p + "heat_residual_rms_nats_per_dim_band"))
    if bands:
        lines.append("heat residual RMS of t R / d by band: " + ", ".join(f"{v:.4f}" for _, v in bands)
                     + f" nats/dim (bound {cons.HEAT_RESIDUAL_RMS_MAX_NATS_PER_DIM:.4f})")
    if p + "near_gaussian_t_lap_per_dim" in m:
        lim = m[p + "near_gaussian_t_lap_per_dim"] - m[p + "near_gaussian_deviation"]
        lines.append(f"t Laplacian U / d at the largest t: {m[p + 'near_gaussian_t_lap_per_dim']:.4f} +- "
                     f"{m[p + 'near_gaussian_t_lap_per_dim_stderr']:.4f}, Gaussian limit {lim:.4f} "
                     f"(bound on the difference {cons.NEAR_GAUSSIAN_DEVIATION_MAX:g})")
    return lines + c["warnings"]


def _grid(table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_pylist(), dtype=np.float64)


def format_summary(s: dict) -> str:
    lines = [f"{s['n']} images, d = {s['dim']}: NLL {s['nll_bpd_mean']:.4f} +- {s['nll_bpd_stderr']:.4f} bits/dim, "
             f"mean log p {s['logp_nats_mean']:.2f} nats"]
    if s.get("non_finite_rows"):
        lines.append(f"WARNING: {s['non_finite_rows']} rows have a non-finite log p and are left out of these "
                     f"numbers (first keys: {', '.join(s['non_finite_keys'])})")
    q = s["logp_db_per_dim_quantiles"]
    lines.append("log p quantiles (dB/dim): " + ", ".join(f"{float(k):g}: {v:.3f}" for k, v in q.items()))
    if "nll_bpd_dequantized_mean" in s:
        lines.append(f"dequantized NLL {s['nll_bpd_dequantized_mean']:.4f} bits/dim")
    for row in s.get("d_eff", []):
        lines.append(f"d_eff at t={row['t']:.3g}: denoising {row['denoising_mean']:.3f}, time {row['time_mean']:.3f}, "
                     f"gap {row['gap_mean']:+.3f} +- {row['gap_stderr']:.3f}")
    if "consistency" in s:
        lines += _format_consistency(s["consistency"])
    return "\n".join(lines)


def figures(table, t_grid, out_dir: Path) -> list[Path]:
    """PNGs: the histogram of log p (dB/dim, log-frequency axis) and mean d_eff against t."""
    from dsm.plumbing.plots import pyplot, save_figure

    plt = pyplot()

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    db = np.asarray(table.column("logp_db_per_dim").to_numpy(), dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(db, bins=min(60, max(10, len(db) // 20)), log=True, color="tab:blue")
    ax.set_xlabel("log p (dB/dim)")
    ax.set_ylabel("images")
    ax.set_title(f"log p of {len(db)} images")
    paths.append(save_figure(fig, out_dir / "logp_hist.png"))
    if len(t_grid):
        a, b = _grid(table, "deff_denoising"), _grid(table, "deff_time")
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(t_grid, a.mean(0), "o-", label="denoising estimator")
        ax.plot(t_grid, b.mean(0), "s--", label="time-score estimator")
        ax.set_xscale("log")
        ax.set_xlabel("noise variance t")
        ax.set_ylabel("mean d_eff")
        ax.legend(fontsize=8)
        paths.append(save_figure(fig, out_dir / "d_eff.png"))
    return paths
