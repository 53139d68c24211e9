"""Energy forms on 8x8 digits: held-out NLL of small UNet energies against a Gaussian.

Trains the `tiny` UNet with each (form, scaling) for the same number of steps and prints the
normalized held-out NLL in bits/dim (plain convention, x = k/16), next to the Gaussian
fitted to the training data at the same floor t_min. Reproduces the comparison in
docs/unet.md (why the tests use `inner+c`).

    .venv/bin/python benchmarks/unet_digits_forms.py [--steps 1000]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import machine
from sklearn.datasets import load_digits

from dsm.core import losses, models, noise, normalize, toy, units
from dsm.core.fit import fit

T_MIN, T_MAX = 1e-4, 1e3
VARIANTS = [("inner+c", "variance"), ("inner", "variance"), ("inner", "none"), ("inner+c", "none")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    args = p.parse_args()
    x = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = x[perm[:1500]], x[perm[1500:]]
    flat = train.flatten(1).double()
    gauss = toy.Gaussian(flat.mean(0), torch.cov(flat.T) + T_MIN * torch.eye(64, dtype=torch.float64))
    nll_gauss = float(units.bits_per_dim(gauss.log_prob(test.flatten(1).double()), 64).mean())
    print(f"machine: {machine()}")
    print(f"Gaussian fit (Sigma + t_min I): {nll_gauss:.3f} bits/dim\n")
    print("| form | scaling | steps | held-out NLL (bits/dim) | train time (s) |")
    print("|---|---|---|---|---|")
    for form, scaling in VARIANTS:
        torch.manual_seed(0)
        model = models.unet_energy(1, 8, "tiny", form=form, scaling=scaling, t_min=T_MIN, t_max=T_MAX,
                                   embedding="log")
        t0 = time.time()
        res = fit(model, losses.DualScoreMatching(),
                  lambda n, g: train[torch.randint(0, len(train), (n,), generator=g)],
                  noise.make_t_sampler("log_uniform", T_MIN, T_MAX), steps=args.steps, batch_size=128,
                  lr=1e-3, progress=False)
        secs = time.time() - t0
        normalize.normalize(res.model, test, T_MAX)
        nll = float(units.bits_per_dim(res.model.log_prob(test), 64).mean())
        print(f"| {form} | {scaling} | {args.steps} | {nll:.3f} | {secs:.0f} |", flush=True)


if __name__ == "__main__":
    main()
