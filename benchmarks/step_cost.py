"""Training-step cost: dual score matching (energy, double backprop) vs a plain score model.

Same MLP backbone, same batch, same optimizer; both steps go through dsm.core.step.train_step.
Reports ms/step and the ratio energy/score, for a few sizes.

    .venv/bin/python benchmarks/step_cost.py
"""

from __future__ import annotations

import argparse

import torch
from _common import machine, time_interleaved

from dsm.core import losses, models, noise
from dsm.core.step import train_step


def bench(dim: int, width: int, depth: int, batch: int) -> dict[str, float]:
    torch.manual_seed(0)
    kw = dict(t_min=1e-4, t_max=1e3, width=width, depth=depth)
    energy = models.mlp_energy(dim, form="inner", **kw)
    score = models.mlp_score_model(dim, **kw)
    sampler = noise.make_t_sampler("log_uniform", 1e-4, 1e3)
    x = torch.randn(batch, dim)
    opts = {"energy": torch.optim.Adam(energy.parameters(), 1e-4), "score": torch.optim.Adam(score.parameters(), 1e-4)}
    fns = {
        "energy": lambda: train_step(energy, opts["energy"], losses.DualScoreMatching(), x, sampler),
        "score": lambda: train_step(score, opts["score"], losses.Denoising(), x, sampler),
    }
    t = time_interleaved(fns)
    return {"energy_ms": 1e3 * t["energy"], "score_ms": 1e3 * t["score"], "ratio": t["energy"] / t["score"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=512)
    args = p.parse_args()
    print(f"machine: {machine()}")
    print("| d | MLP width x depth | batch | energy step (ms) | score step (ms) | ratio |")
    print("|---|---|---|---|---|---|")
    for dim, width, depth in [(2, 256, 3), (16, 256, 3), (784, 512, 3)]:
        r = bench(dim, width, depth, args.batch)
        print(f"| {dim} | {width} x {depth} | {args.batch} | {r['energy_ms']:.1f} | {r['score_ms']:.1f} "
              f"| {r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
