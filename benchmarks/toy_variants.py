"""Training variants on the exact 2-D / 16-D mixtures: log p error with and without weight EMA.

Same setup as tests/core/test_trained_toys.py (MLP `inner+c`, batch 512, t log-uniform on
[1e-4, 1e3], normalized at t = 1e3). Reproduces the EMA numbers of docs/toys.md.

    .venv/bin/python benchmarks/toy_variants.py [--dim 2] [--steps 400 1500] [--ema 0.998]
"""

from __future__ import annotations

import argparse

import torch
from _common import machine

from dsm.core import losses, models, noise, normalize, toy
from dsm.core.fit import fit


def log_p_error(d: int, steps: int, ema: float | None) -> float:
    mix = toy.anisotropic_mixture(d, n_components=4, seed=0)
    torch.manual_seed(0)
    heldout = mix.sample(4000, torch.Generator().manual_seed(100))
    model = models.mlp_energy(d, form="inner+c", t_min=1e-4, t_max=1e3, sigma_data=float(heldout.std()))
    res = fit(model, losses.DualScoreMatching(), lambda n, g: mix.sample(n, g),
              noise.make_t_sampler("log_uniform", 1e-4, 1e3), steps=steps, batch_size=512, lr=1e-3,
              ema_decay=ema, progress=False)
    normalize.normalize(res.model, heldout, 1e3)
    x = mix.sample(2000, torch.Generator().manual_seed(12))
    return float(((res.model.log_prob(x) - mix.log_prob(x).double()) / d).abs().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--steps", type=int, nargs="+", default=[400, 1500])
    p.add_argument("--ema", type=float, default=0.998)
    args = p.parse_args()
    print(f"machine: {machine()}")
    print(f"\n| d | steps | no EMA (nats/dim) | EMA {args.ema:g} (nats/dim) |")
    print("|---|---|---|---|")
    for steps in args.steps:
        print(f"| {args.dim} | {steps} | {log_p_error(args.dim, steps, None):.4f} | "
              f"{log_p_error(args.dim, steps, args.ema):.4f} |", flush=True)


if __name__ == "__main__":
    main()
