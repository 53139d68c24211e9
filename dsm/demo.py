"""The core demo: fit an energy to an exact Gaussian mixture and compare normalized log p.

It runs the whole core in one process: dual score matching, normalization at t_max with
the paired estimator and the several-t diagnostic, log p against the exact density, the
PF-ODE cross-check, and d_eff by both estimators. Results go to stdout, to a PNG, and to
MLflow (SQLite under the workspace by default).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from pydantic import Field, model_validator

from dsm.core import deff, losses, models, noise, normalize, ode, toy, units
from dsm.core.energy import EnergyForm
from dsm.core.fit import fit
from dsm.plumbing.config import StrictModel


class DemoConfig(StrictModel):
    """Settings of ``dsm demo``; every field can be overridden with ``key=value``."""

    dim: int = Field(2, ge=1, le=512, description="dimension of the mixture")
    components: int = Field(4, ge=1)
    mixture_seed: int = 0
    form: EnergyForm = "inner+c"
    width: int = Field(256, ge=1)
    depth: int = Field(3, ge=1)
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(512, ge=1)
    lr: float = Field(1e-3, gt=0)
    ema_decay: float | None = Field(None, gt=0, lt=1, description="weight EMA; off by default (see docs/toys.md)")
    tsm_weight: float = Field(1.0, ge=0, description="lambda; 0 is single score matching")
    t_min: float = Field(1e-4, gt=0)
    t_max: float = Field(1e3, gt=0)
    t_sampler: str = "log_uniform"
    n_test: int = Field(2000, ge=10)
    ode_points: int = Field(16, ge=0, description="test points checked with the PF-ODE (0: skip)")
    ode_steps: int = Field(96, ge=1)
    seed: int = 0
    workspace: str | None = None
    mlflow: bool = True

    @model_validator(mode="after")
    def _check(self):
        if self.t_min >= self.t_max:
            raise ValueError(f"t_min ({self.t_min:g}) must be < t_max ({self.t_max:g})")
        if self.t_sampler not in noise.T_SAMPLERS:
            raise ValueError(f"t_sampler {self.t_sampler!r} unknown; known: {sorted(noise.T_SAMPLERS)}")
        return self


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    """Run the demo; returns the summary metrics (also printed and logged)."""
    from dsm.runtime.tracking import workspace_dir

    torch.manual_seed(cfg.seed)
    out_dir = workspace_dir(cfg.workspace) / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    mix = toy.anisotropic_mixture(cfg.dim, cfg.components, seed=cfg.mixture_seed)
    d = cfg.dim
    heldout = mix.sample(4000, torch.Generator().manual_seed(cfg.seed + 1))
    sigma_data = float(heldout.std())
    model = models.mlp_energy(d, form=cfg.form, t_min=cfg.t_min, t_max=cfg.t_max, width=cfg.width,
                              depth=cfg.depth, sigma_data=sigma_data)
    sampler = noise.make_t_sampler(cfg.t_sampler, cfg.t_min, cfg.t_max)
    print(f"dsm demo: fitting a {cfg.form} MLP energy to a {cfg.components}-component Gaussian mixture "
          f"in d={d} ({cfg.steps} steps, lambda={cfg.tsm_weight:g})")
    t0 = time.time()
    res = fit(model, losses.DualScoreMatching(tsm_weight=cfg.tsm_weight), lambda n, g: mix.sample(n, g),
              sampler, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, ema_decay=cfg.ema_decay,
              seed=cfg.seed, progress=progress, desc="dual score matching")
    train_s = time.time() - t0
    m = res.model

    log_z = normalize.normalize(m, heldout, cfg.t_max)
    agree = normalize.log_z_agreement(m, heldout, [cfg.t_max / 10, cfg.t_max / 3, cfg.t_max])
    x = mix.sample(cfg.n_test, torch.Generator().manual_seed(cfg.seed + 2))
    lp_model, lp_exact = m.log_prob(x), mix.log_prob(x).double()
    err = (lp_model - lp_exact) / d
    metrics = {  # nats unless named otherwise
        "train_seconds": train_s,
        "skipped_steps": res.skipped,
        "log_z": log_z.value,
        "log_z_stderr": log_z.stderr,
        "log_z_spread_over_t": agree.max_abs_diff,
        "logp_abs_err_nats_per_dim": float(err.abs().mean()),
        "logp_bias_nats_per_dim": float(err.mean()),
        "cross_entropy_nats_per_dim": float(-lp_model.mean() / d),
        "entropy_exact_nats_per_dim": float(-lp_exact.mean() / d),
        "nll_bits_per_dim_plain": float(units.bits_per_dim(lp_model, d).mean()),
    }
    _print_fit(cfg, metrics, log_z, agree, lp_model, lp_exact)

    if cfg.ode_points:
        metrics.update(_ode_check(cfg, m, x, heldout, lp_model, lp_exact))
    ts = [10.0**k for k in range(-3, 3)]
    de = [deff.d_eff(m, x[:500], t, n_noise=8) for t in ts]
    print("  d_eff (mean over 500 points):   t     denoising   time-score")
    for t, e in zip(ts, de):
        print(f"                           {t:8.0e}  {float(e.denoising.mean()):9.3f}  {float(e.time.mean()):9.3f}")
    metrics["d_eff_max_gap"] = max(float((e.denoising - e.time).mean().abs()) for e in de)

    fig_path = out_dir / "demo.png"
    _plot(fig_path, mix, m, lp_model, lp_exact, ts, de, cfg)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"  figure: {fig_path}")
    if cfg.mlflow:
        _log_run(cfg, metrics, fig_path)
    return metrics


def _print_fit(cfg: DemoConfig, metrics: dict, log_z, agree, lp_model, lp_exact) -> None:
    print(f"  trained in {metrics['train_seconds']:.0f} s ({metrics['skipped_steps']} non-finite steps skipped)")
    print(f"  log Z at t={cfg.t_max:g}: {log_z.value:.4f} +- {log_z.stderr:.4f} nats (paired estimator)")
    print("  log Z at " + ", ".join(f"t={e.t:g}: {e.value:.4f}+-{e.stderr:.4f}" for e in agree.estimates)
          + f"  -> spread {agree.max_abs_diff:.4f} nats ({'consistent' if agree.consistent else 'beyond the errors'})")
    print(f"  held-out log p, model vs exact: mean |error| {metrics['logp_abs_err_nats_per_dim']:.4f} nats/dim, "
          f"bias {metrics['logp_bias_nats_per_dim']:+.4f} nats/dim")
    print(f"  cross-entropy {metrics['cross_entropy_nats_per_dim']:.4f} vs exact entropy "
          f"{metrics['entropy_exact_nats_per_dim']:.4f} nats/dim "
          f"({metrics['nll_bits_per_dim_plain']:.4f} bits/dim, plain convention)")
    print("      log p model   log p exact   (nats, first test points)")
    for a, b in zip(lp_model[:5].tolist(), lp_exact[:5].tolist()):
        print(f"     {a:12.4f}  {b:12.4f}")


def _ode_check(cfg: DemoConfig, m, x, heldout, lp_model, lp_exact) -> dict:
    """log p by the probability-flow ODE on the first ``cfg.ode_points`` test points, against the
    energy's and the exact one (nats/dim)."""
    d = cfg.dim
    xo = x[: cfg.ode_points]
    t1 = time.time()
    r = ode.ode_log_prob(m, xo, prior=normalize.DataMoments.of(heldout), t_start=cfg.t_min / 10,
                         t_end=cfg.t_max, steps=cfg.ode_steps,
                         trace="exact" if d <= 16 else "hutchinson")
    gap = (r.log_prob - lp_model[: cfg.ode_points]) / d
    metrics = dict(ode_vs_energy_nats_per_dim=float(gap.abs().mean()), ode_nfe=r.nfe,
                   ode_seconds=time.time() - t1,
                   ode_abs_err_nats_per_dim=float(((r.log_prob - lp_exact[: cfg.ode_points]) / d).abs().mean()))
    print(f"  PF-ODE check on {cfg.ode_points} points ({r.nfe} drift evaluations each): "
          f"|ODE - energy| {metrics['ode_vs_energy_nats_per_dim']:.4f} nats/dim, "
          f"|ODE - exact| {metrics['ode_abs_err_nats_per_dim']:.4f} nats/dim")
    return metrics


def _log_run(cfg: DemoConfig, metrics: dict, fig_path: Path) -> None:
    """The demo as one MLflow run in the workspace's ``demo`` experiment."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from dsm.runtime.tracking import tracking_uri, use_experiment

    client = MlflowClient(tracking_uri(cfg.workspace))
    run_id = client.create_run(use_experiment("demo", cfg.workspace, client),
                               run_name=f"demo-d{cfg.dim}-{cfg.form}-lambda{cfg.tsm_weight:g}").info.run_id
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     params=[Param(k, str(v)) for k, v in cfg.model_dump().items()])
    client.log_artifact(run_id, str(fig_path))
    client.set_terminated(run_id)
    print(f"  MLflow run {run_id} (dsm ui to browse)")


def _plot(path: Path, mix, model, lp_model, lp_exact, ts, de, cfg: DemoConfig) -> None:
    from dsm.plumbing.plots import pyplot, save_figure

    plt = pyplot()

    d = cfg.dim
    panels = 4 if d == 2 else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4))
    ax = axes[0]
    ax.scatter(lp_exact / d, lp_model / d, s=3, alpha=0.4)
    lo, hi = float(lp_exact.min() / d), float(lp_exact.max() / d)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xlabel="exact log p (nats/dim)", ylabel="model log p (nats/dim)", title="normalized log p")
    ax = axes[1]
    ax.semilogx(ts, [float(e.denoising.mean()) for e in de], "o-", label="denoising")
    ax.semilogx(ts, [float(e.time.mean()) for e in de], "s--", label="time score")
    ax.set(xlabel="noise variance t", ylabel="mean d_eff", title="effective dimensionality")
    ax.legend()
    if d == 2:
        x0 = mix.sample(4000, torch.Generator().manual_seed(0))
        lo, hi = x0.min(0).values - 0.5, x0.max(0).values + 0.5
        g0, g1 = torch.meshgrid(torch.linspace(lo[0], hi[0], 120), torch.linspace(lo[1], hi[1], 120), indexing="xy")
        grid = torch.stack([g0.flatten(), g1.flatten()], 1)
        for ax, lp, title in ((axes[2], mix.log_prob(grid).double(), "exact log p"),
                              (axes[3], model.log_prob(grid), "model log p")):
            im = ax.imshow(lp.reshape(120, 120).clamp_min(-12).numpy(), origin="lower", cmap="viridis",
                           extent=[float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])], vmin=-12)
            ax.set_title(title)
            fig.colorbar(im, ax=ax, shrink=0.8)
    save_figure(fig, path)


__all__ = ["DemoConfig", "run_demo"]
