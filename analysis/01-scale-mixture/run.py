"""Study 01: single vs dual score matching on the paper's scale mixture (Figure 1).

    .venv/bin/python analysis/01-scale-mixture/run.py [--dim D] [--steps N]

Trains two MLP energies (dsm.core.fit, in-process) on 1/2 N(0, I) + 1/2 N(0, 16 I) in d dimensions,
one with dual score matching (lambda = 1), one with single (lambda = 0, DSM only), normalizes
both at t_max with the paired estimator, and compares with the exact density:
- cross-entropy -E log p_model(x) against the exact entropy, nats/dim and dB/dim;
- the energy profile: the density is radial, so -log p(x)/d is a function of r = ||x||/sqrt(d);
  the figure plots it for the exact density and both models, on test points and on a radial line;
- the error of log p in dB/dim over test points (mean, mean |.|, and the max over the profile
  within the data's range).
Trained models are cached under analysis/runs/01-scale-mixture/, so a re-run only evaluates.
Writes results-d<D>[-dualsteps<N>].json beside this script, and the figure energy_profile-d<D>.png
there for the config's own settings (into analysis/runs/01-scale-mixture/ for --dim/--steps/--dual-steps).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import WORKSPACE, write_json  # noqa: E402

from dsm.core import losses, models, noise, normalize, toy  # noqa: E402
from dsm.core.fit import fit  # noqa: E402

HERE = Path(__file__).resolve().parent
DB = 10 / math.log(10)  # nats/dim -> dB/dim


def train_or_load(cfg: dict, mix, lam: float, sigma_data: float, cache: Path, steps: int):
    model = models.mlp_energy(cfg["dim"], form=cfg["form"], t_min=cfg["t_min"], t_max=cfg["t_max"],
                              width=cfg["width"], depth=cfg["depth"], sigma_data=sigma_data)
    info = {}
    if cache.exists():
        blob = torch.load(cache, weights_only=False)
        model.load_state_dict(blob["state"])
        info = blob["info"]
        print(f"lambda={lam:g}: loaded {cache}")
    else:
        torch.manual_seed(cfg["seed"])
        model = models.mlp_energy(cfg["dim"], form=cfg["form"], t_min=cfg["t_min"], t_max=cfg["t_max"],
                                  width=cfg["width"], depth=cfg["depth"], sigma_data=sigma_data)
        t0 = time.time()
        res = fit(model, losses.DualScoreMatching(tsm_weight=lam), lambda n, g: mix.sample(n, g),
                  noise.make_t_sampler("log_uniform", cfg["t_min"], cfg["t_max"]), steps=steps,
                  batch_size=cfg["batch_size"], lr=cfg["lr"], seed=cfg["seed"], progress=True,
                  desc=f"lambda={lam:g}")
        info = {"steps": steps, "train_seconds": time.time() - t0, "skipped_steps": res.skipped,
                "final_loss_mean_last100": float(sum(res.losses[-100:]) / len(res.losses[-100:]))}
        model = res.model
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": model.state_dict(), "info": info}, cache)
    model.eval()
    return model, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(HERE / "config.yaml"))
    ap.add_argument("--dim", type=int)
    ap.add_argument("--steps", type=int, help="training steps of both models")
    ap.add_argument("--dual-steps", type=int, help="training steps of the dual (lambda > 0) model only")
    args = ap.parse_args()
    cfg = yaml.safe_load(Path(args.config).read_text())
    if args.dim:
        cfg["dim"] = args.dim
    if args.steps:
        cfg["steps"] = args.steps
    if args.dual_steps:
        cfg["dual_steps"] = args.dual_steps
    d = cfg["dim"]
    # one thread: on this shared 2-core machine two OpenMP threads ran a d=1000 step 40x slower (1.9 s vs 0.05 s)
    torch.set_num_threads(int(os.environ.get("DSM_ANALYSIS_THREADS", "1")))
    mix = toy.scale_mixture(d)
    h, h_se = mix.entropy_mc(cfg["n_entropy_mc"], torch.Generator().manual_seed(3))
    heldout = mix.sample(cfg["n_heldout"], torch.Generator().manual_seed(cfg["seed"] + 100))
    x = mix.sample(cfg["n_test"], torch.Generator().manual_seed(4))
    lp_true = mix.log_prob(x).double()
    sigma_data = math.sqrt(8.5)  # per-coordinate std of the mixture: 1/2 * 1 + 1/2 * 16
    tag = f"d{d}-{cfg['form']}-w{cfg['width']}x{cfg['depth']}-b{cfg['batch_size']}"
    # a radial line through the data's range, along a fixed random unit direction
    u = torch.randn(d, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    u = u / u.norm()
    radii = torch.linspace(0.5, 5.0, 91, dtype=torch.float64)
    line = (radii[:, None] * math.sqrt(d) * u[None, :]).float()
    lp_line_true = mix.log_prob(line).double()
    r_test = (x.double().norm(dim=1) / math.sqrt(d))
    lo, hi = float(r_test.min()), float(r_test.max())
    in_range = (radii >= lo) & (radii <= hi)

    out = {"dim": d, "config": cfg, "exact_entropy_nats_per_dim": h / d, "exact_entropy_stderr": h_se / d,
           "exact_entropy_db_per_dim": -h / d * DB, "paper": {
               "dim": 1000, "exact_cross_entropy_nats_per_dim": 2.111, "dual_nats_per_dim": 2.098,
               "single_nats_per_dim": 3.849, "dual_energy_error_db_per_dim": 0.11,
               "single_energy_error_db_per_dim": 9}, "models": {}}
    curves = {}
    for lam in cfg["tsm_weights"]:
        name = "dual" if lam > 0 else "single"
        steps = (cfg.get("dual_steps") or cfg["steps"]) if lam > 0 else cfg["steps"]
        model, info = train_or_load(cfg, mix, lam, sigma_data,
                                    WORKSPACE / "01-scale-mixture" / f"{tag}-steps{steps}-lambda{lam:g}.pt", steps)
        info = {**info, "steps": steps}
        log_z = normalize.normalize(model, heldout, cfg["t_max"])
        agree = normalize.log_z_agreement(model, heldout, [cfg["t_max"] / 10, cfg["t_max"] / 3, cfg["t_max"]])
        with torch.no_grad():
            lp = torch.cat([model.log_prob(b) for b in x.split(500)]).double()
            lp_line = model.log_prob(line).double()
        err_db = (lp - lp_true) / d * DB
        err_line_db = ((lp_line - lp_line_true) / d * DB)[in_range]
        ce = float(-lp.mean() / d)
        res = {
            **info, "tsm_weight": lam,
            "log_z": log_z.value, "log_z_stderr": log_z.stderr,
            "log_z_at_t": {f"{e.t:g}": [e.value, e.stderr] for e in agree.estimates},
            "cross_entropy_nats_per_dim": ce,
            "cross_entropy_error_nats_per_dim": ce - h / d,
            "cross_entropy_error_db_per_dim": (ce - h / d) * DB,
            "logp_error_db_per_dim_mean": float(err_db.mean()),
            "logp_error_db_per_dim_mean_abs": float(err_db.abs().mean()),
            "logp_error_db_per_dim_rms": float(err_db.square().mean().sqrt()),
            "profile_error_db_per_dim_max_abs_in_data_range": float(err_line_db.abs().max()),
        }
        out["models"][name] = res
        curves[name] = (lp, lp_line)
        print(f"{name:6s} (lambda={lam:g}): cross-entropy {ce:.4f} nats/dim (exact {h / d:.4f}), "
              f"error {res['cross_entropy_error_db_per_dim']:+.3f} dB/dim; log p error mean |.| "
              f"{res['logp_error_db_per_dim_mean_abs']:.3f} dB/dim, profile max "
              f"{res['profile_error_db_per_dim_max_abs_in_data_range']:.3f}; "
              f"log Z {log_z.value:.2f} +- {log_z.stderr:.3f}, spread over t {agree.max_abs_diff:.3f}")
    suffix = f"-dualsteps{cfg['dual_steps']}" if cfg.get("dual_steps") else ""
    write_json(HERE / f"results-d{d}{suffix}.json", out)
    # one figure in the repository (the config's own run); the others go to the workspace
    default = not (args.dim or args.steps or args.dual_steps)
    fig_dir = HERE if default else WORKSPACE / "01-scale-mixture"
    _figure(fig_dir / f"energy_profile-d{d}{suffix}.png", d, r_test, lp_true, radii, lp_line_true, curves, out,
            (lo, hi))
    print(f"wrote {HERE / f'results-d{d}{suffix}.json'}")


def _figure(path, d, r_test, lp_true, radii, lp_line_true, curves, out, rng):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    ax.plot(radii, -lp_line_true / d * DB, "k-", lw=2, label="exact")
    style = {"dual": ("C0", "--"), "single": ("C3", ":")}
    for name, (_lp, lp_line) in curves.items():
        c, ls = style[name]
        m = out["models"][name]
        ax.plot(radii, -lp_line / d * DB, color=c, ls=ls, lw=2,
                label=f"{name} SM, {m['steps']} steps "
                      f"(cross-entropy err {m['cross_entropy_error_db_per_dim']:+.2f} dB/dim)")
    ax.axvspan(*rng, color="0.9", zorder=0, label="test data range")
    ax.set(xlabel="r = ||x|| / sqrt(d)", ylabel="energy  -10 log10 p(x) / d  (dB/dim)",
           title=f"energy profile, 1/2 N(0,I) + 1/2 N(0,16I), d={d}")
    ax.legend(fontsize=7)
    ax = axes[1]
    for name, (lp, _) in curves.items():
        c, _ = style[name]
        ax.scatter(r_test, (lp - lp_true) / d * DB, s=2, color=c, alpha=0.4, label=f"{name} SM")
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="r = ||x|| / sqrt(d)", ylabel="log p model - exact (dB/dim)", title="error on test points")
    ax.legend(fontsize=7, markerscale=4)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
