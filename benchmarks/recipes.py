"""The CPU recipes' acceptance table (docs/recipes.md) for one trained model: held-out log p
against classical baselines, and the model's agreement with itself.

For a model file (``dsm train``'s model.pt or model-best.pt) and its training and held-out shard
folders, prints a markdown table of

- held-out log p (nats/dim; NLL in bits/dim in the 8-bit convention) of the model, of the
  full-covariance Gaussian and of Gaussian mixtures with K components (scikit-learn, full
  covariances, ``dsm.stats.baselines``' reg_covar), each baseline as fitted and smoothed to the model's
  t_min, with the paired difference model - baseline and its standard error;
- the energy - PF-ODE log p gap, mean |gap| over the first ``--ode-images`` held-out images
  (target <= 0.05 nats/dim), and log Z at t = 100, 333, 1000 (target: spread <= 0.1 nats).

    .venv/bin/python benchmarks/recipes.py RUN/model-best.pt --train WS/data/patches-*/train \
        --test WS/data/patches-*/test --ks 1,10,50,100

Everything here is dsm's library code (dsm.api, dsm.stats.baselines, dsm.core.consistency); the script only
arranges it. Units: nats/dim unless a column says bits/dim.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
from _common import machine

from dsm.api import load
from dsm.core import consistency as cons
from dsm.core.bundle import load_model
from dsm.data.inputs import open_input
from dsm.report.baselines import read_training
from dsm.report.scores import iter_pieces
from dsm.stats import baselines as bl

LOG_Z_TS = (100.0, 333.0, 1000.0)


def read_heldout(path: str, n: int, shape) -> tuple[list[str], torch.Tensor]:
    """The first n held-out images (keys, (n, *shape) float32), read as ``dsm score`` reads them."""
    keys, xs = [], []
    for k, x in iter_pieces(open_input(path), shape):
        keys += list(k)
        xs.append(torch.as_tensor(np.asarray(x)))
        if len(keys) >= n:
            break
    return keys[:n], torch.cat(xs)[:n].float()


def dequantize(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """8-bit images k/255 -> (k + u) / 256 with u ~ U[0, 1) per pixel (the convention of
    ``dsm score --dequantize``; seeded, so every density sees the same points)."""
    k = torch.round(x * 255)
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))
    return ((k + u) / 256).to(x.dtype)


def model_logp(m, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    """log p in nats per image, (n,)."""
    return np.concatenate([m.log_prob(x[i:i + batch]).double().numpy() for i in range(0, len(x), batch)])


def bpd8(nats_per_dim: float) -> float:
    """NLL in bits/dim, 8-bit convention (pixels k/255 in [0, 1]): 8 - log p / (d ln 2)."""
    return 8.0 - nats_per_dim / math.log(2)


def max_iter_of(args, k: int) -> int:
    """--max-iter: one value for every K, or one per K of --ks (EM iterations cap the CPU time)."""
    its = args.max_iter
    return its[0] if len(its) == 1 else its[args.ks.index(k)]


def fitted_baseline(args, train: np.ndarray, k: int) -> tuple[bl.Baseline, float]:
    """The K-component baseline and its fit time (s), from ``--cache`` when it holds this fit
    (an .npz of arrays: no pickle), else fitted and stored there."""
    from dsm.core.toy import GaussianMixture

    reg = "" if args.reg_covar == bl.REG_COVAR else f"-reg{args.reg_covar:g}"
    path = f"{args.cache}-K{k}{reg}.npz" if args.cache else None
    if path and os.path.exists(path):
        z = np.load(path, allow_pickle=False)
        if int(z["n_train"]) == len(train) and int(z["max_iter"]) == max_iter_of(args, k):
            density = GaussianMixture(z["weights"], z["means"], z["covs"])
            return bl.Baseline(k, float(z["reg_covar"]), bool(z["converged"]), int(z["n_iter"]), len(train),
                               density), float(z["fit_s"])
    t0 = time.perf_counter()
    b = bl.fit_baseline(train, k, max_iter=max_iter_of(args, k), reg_covar=args.reg_covar)
    fit_s = time.perf_counter() - t0
    if path:
        d = b.density
        np.savez(path, weights=d.log_w.exp().numpy(), means=d.means.numpy(), covs=d.covs.numpy(), n_train=len(train),
                 max_iter=max_iter_of(args, k), reg_covar=b.reg_covar, converged=b.converged, n_iter=b.n_iter,
                 fit_s=fit_s)
    return b, fit_s


def baseline_rows(args, d: int, x: np.ndarray, lp_model: np.ndarray, t_min: float) -> tuple[list[str], dict]:
    """Markdown rows and a JSON dict for every K: as fitted and smoothed to t_min, paired with the model."""
    train, n_total, _ = read_training(args.train, d, args.max_train, bl.SEED)
    rows, out = [], {}
    for k in args.ks:
        b, fit_s = fitted_baseline(args, train, k)
        for label, t in (("as fitted", 0.0), (f"smoothed to t_min = {t_min:g}", t_min)):
            lp = bl.log_prob(b.density, x, t)
            m, diff = bl.mean_se(lp, d), bl.paired_difference(lp_model, lp, d)
            rows.append(f"| {b.name}, {label} | {m.mean_nats_per_dim:.3f} +- {m.stderr_nats_per_dim:.3f} | "
                        f"{bpd8(m.mean_nats_per_dim):.3f} | "
                        f"{diff.mean_nats_per_dim:+.3f} +- {diff.stderr_nats_per_dim:.3f} | "
                        f"{'converged' if b.converged else 'not converged'} in {b.n_iter} EM iterations, "
                        f"{fit_s:.0f} s, {len(train)} of {n_total} training images |")
            out[f"K{k} {label}"] = {"mean": m.as_dict(), "paired": diff.as_dict(), "converged": b.converged}
    return rows, out


def consistency_rows(m, x: torch.Tensor, keys: list[str], t_min: float, t_max: float,
                     args) -> tuple[list[str], dict]:
    """The energy - PF-ODE gap (t_min to t_max) on the first --ode-images images and log Z at LOG_Z_TS."""
    opts = cons.Options(log_z_ts=LOG_Z_TS, ode_images=args.ode_images, ode_steps=args.ode_steps, heat_examples=0)
    c = cons.check(m.energy_model, x, keys, band_edges=[t_min, t_max], options=opts)
    z = c.log_z
    gap = c.ode
    if gap is None:  # --ode-images 0
        return ([f"- log Z spread over t = 100..1000: **{z.max_abs_diff:.2f}** nats"],
                {"log_z_spread": z.max_abs_diff})
    rows = [f"- energy - PF-ODE log p over {len(gap.gap)} held-out images ({args.ode_steps} Heun steps, "
            f"{'exact' if gap.exact else 'Hutchinson'} Laplacian): mean {gap.mean:+.3f} +- {gap.mean_stderr:.3f}, "
            f"mean |gap| **{gap.mean_abs:.3f}** nats/dim (target <= 0.05); per-image probe error "
            f"{float(gap.stderr.mean()):.3f}",
            "- log Z at t = " + ", ".join(f"{e.t:g}: {e.value:.2f} +- {e.stderr:.2f}" for e in z.estimates)
            + f" nats; spread **{z.max_abs_diff:.2f}** (target <= 0.1), chi2 {z.chi2:.1f}"]
    return rows, {"ode_gap_mean_abs": gap.mean_abs, "ode_gap_mean": gap.mean, "ode_gaps": gap.gap.tolist(),
                  "ode_gap_stderrs": gap.stderr.tolist(), "log_z_spread": z.max_abs_diff,
                  "log_z": {e.t: e.value for e in z.estimates}}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="the model file (not needed with --baselines-only)")
    p.add_argument("--train", required=True, help="training shard folder (the baselines are fitted on it)")
    p.add_argument("--test", required=True, help="held-out shard folder")
    p.add_argument("--ks", default="1,10,50,100", type=lambda s: [int(k) for k in s.split(",")])
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--max-train", type=int, default=20000)
    p.add_argument("--max-iter", default=[bl.MAX_ITER], type=lambda s: [int(i) for i in s.split(",")],
                   help="EM iterations: one value, or one per K of --ks (default scikit-learn's 100)")
    p.add_argument("--ode-images", type=int, default=16)
    p.add_argument("--ode-steps", type=int, default=64)
    p.add_argument("--reg-covar", type=float, default=bl.REG_COVAR,
                   help=f"added to every baseline covariance's diagonal (default scikit-learn's {bl.REG_COVAR:g})")
    p.add_argument("--json", help="also write the numbers here")
    p.add_argument("--cache", help="file prefix for the fitted baselines (PREFIX-K10.npz, ...): fit once per data set")
    p.add_argument("--baselines-only", action="store_true", help="fit (and cache) the baselines; no model needed")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    if args.baselines_only:
        d = math.prod(open_input(args.train).shape)
        train, n_total, _ = read_training(args.train, d, args.max_train, bl.SEED)
        for k in args.ks:
            b, fit_s = fitted_baseline(args, train, k)
            print(f"K = {k}: {'converged' if b.converged else 'not converged'} in {b.n_iter} EM iterations, "
                  f"{fit_s:.0f} s",
                  flush=True)
        return
    m = load(args.model)
    t_min, t_max = load_model(args.model).t_range  # the training t range
    keys, x = read_heldout(args.test, args.n_test, m.shape)
    d = m.dim
    lp = model_logp(m, x)
    own = bl.mean_se(lp, d)
    print(f"{args.model}: step {m.meta.get('step')}, t_min {t_min:g}, d = {d}, {len(x)} held-out images; {machine()}")
    print("\n| density | held-out log p (nats/dim) | NLL (bits/dim, 8-bit) | model - this, paired (nats/dim) | fit |")
    print("|---|---|---|---|---|")
    print(f"| **dsm** | {own.mean_nats_per_dim:.3f} +- {own.stderr_nats_per_dim:.3f} | "
          f"{bpd8(own.mean_nats_per_dim):.3f} | | |")
    rows, base = baseline_rows(args, d, bl.flatten(x), lp, t_min)
    print("\n".join(rows), flush=True)
    if m.eight_bit:  # the same at uniformly dequantized pixels: no density can profit from the 8-bit grid there
        xq = dequantize(x)
        lpq = model_logp(m, xq)
        ownq = bl.mean_se(lpq, d)
        print(f"\nAt dequantized pixels (k + u) / 256, u ~ U[0, 1) seeded: dsm {ownq.mean_nats_per_dim:.3f} +- "
              f"{ownq.stderr_nats_per_dim:.3f} nats/dim")
        print("\n| density | held-out log p, dequantized (nats/dim) | model - this, paired (nats/dim) |\n|---|---|---|")
        train = read_training(args.train, d, args.max_train, bl.SEED)[0]  # once, not once per K
        for k in args.ks:
            b, _ = fitted_baseline(args, train, k)
            lpb = bl.log_prob(b.density, bl.flatten(xq), 0.0)
            mb, diff = bl.mean_se(lpb, d), bl.paired_difference(lpq, lpb, d)
            print(f"| {b.name}, as fitted | {mb.mean_nats_per_dim:.3f} +- {mb.stderr_nats_per_dim:.3f} | "
                  f"{diff.mean_nats_per_dim:+.3f} +- {diff.stderr_nats_per_dim:.3f} |", flush=True)
            base[f"K{k} dequantized"] = {"mean": mb.as_dict(), "paired": diff.as_dict()}
        base["dsm dequantized"] = ownq.as_dict()
    crow, cdict = consistency_rows(m, x, keys, t_min, t_max, args)
    print("\n" + "\n".join(crow))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": own.as_dict(), "baselines": base, "consistency": cdict,
                       "step": m.meta.get("step")}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
