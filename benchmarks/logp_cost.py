"""log p cost: one energy evaluation vs the probability-flow ODE, at matched accuracy.

Trains an MLP energy on the 16-D anisotropic mixture (as in the tests), normalizes it, then
computes log p of N test points (a) as -U(x, 0) - log Z (one forward pass) and (b) with the
PF-ODE at increasing step counts, exact Laplacian and Hutchinson. Accuracy is the mean
|log p - exact log p| in nats/dim. "Matched" is the first ODE setting whose error is within
10% of the energy's own error.

    .venv/bin/python benchmarks/logp_cost.py [--dim 16] [--steps 1500]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import machine

from dsm.core import losses, models, noise, normalize, ode, toy
from dsm.core.fit import fit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--points", type=int, default=64)
    args = p.parse_args()
    print(f"machine: {machine()}")
    d = args.dim
    mix = toy.anisotropic_mixture(d, 4, seed=0)
    heldout = mix.sample(4000, torch.Generator().manual_seed(100))
    torch.manual_seed(0)
    model = models.mlp_energy(d, form="inner+c", t_min=1e-4, t_max=1e3, sigma_data=float(heldout.std()))
    fit(model, losses.DualScoreMatching(), lambda n, g: mix.sample(n, g),
        noise.make_t_sampler("log_uniform", 1e-4, 1e3), steps=args.steps, progress=True)
    model.eval()
    normalize.normalize(model, heldout, 1e3)
    prior = normalize.DataMoments.of(heldout)
    x = mix.sample(args.points, torch.Generator().manual_seed(12))
    exact = mix.log_prob(x).double()

    def err(lp):
        return float(((lp - exact) / d).abs().mean())

    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        lp = model.log_prob(x)
    t_energy = (time.perf_counter() - t0) / reps
    e_energy = err(lp)
    print(f"\nenergy: 1 forward pass, {1e3 * t_energy:.2f} ms for {args.points} points, "
          f"error {e_energy:.4f} nats/dim")
    rows = []
    for trace, probes in (("exact", 0), ("hutchinson", 2), ("hutchinson", 8)):
        for steps in (4, 8, 16, 32, 64, 128):
            t0 = time.perf_counter()
            r = ode.ode_log_prob(model, x, prior=prior, t_start=1e-5, t_end=1e3, steps=steps, trace=trace,
                                 n_probes=max(probes, 2))
            name = trace if trace == "exact" else f"hutchinson x{probes}"
            rows.append((name, steps, r.nfe, r.grad_evals, time.perf_counter() - t0, err(r.log_prob)))
    print("\n| Laplacian | ODE steps | drift evals | backward passes | time (s) | error (nats/dim) | time / energy |")
    print("|---|---|---|---|---|---|---|")
    for trace, steps, nfe, nb, secs, e in rows:
        print(f"| {trace} | {steps} | {nfe} | {nb} | {secs:.3f} | {e:.4f} | {secs / t_energy:.0f}x |")
    for trace in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == trace]
        target = 1.1 * e_energy
        match = next((r for r in mine if r[5] <= target), None)
        if match:
            print(f"\nmatched accuracy ({trace}): {match[1]} steps, {match[2]} drift evals, "
                  f"{match[3]} backward passes; {match[4] / t_energy:.0f}x the energy's wall-clock "
                  f"(error {match[5]:.4f} vs energy {e_energy:.4f} nats/dim)")
        else:
            print(f"\nmatched accuracy ({trace}): not reached by 128 steps (error floor "
                  f"{min(r[5] for r in mine):.4f} nats/dim: probe noise)")


if __name__ == "__main__":
    main()
