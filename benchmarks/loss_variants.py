"""Training-step cost of the sweepable loss variants against the paper's loss.

The digits-smoke UNet energy (tiny preset, 8x8), one batch, Adam; every step goes through
dsm.core.step.train_step. Variants: importance sampling of t (noise.sampler: importance) and the
heat-equation regularizer (loss.heat_weight > 0: two Hutchinson probes, a third derivative).
Reports ms/step and the ratio to the paper's loss, measured interleaved in one run.

    .venv/bin/python benchmarks/loss_variants.py [--batch 64]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import machine, time_interleaved

from dsm.core.step import train_step
from dsm.plumbing.config import load_config
from dsm.train import build
from dsm.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "paper loss": [],
    "importance sampling of t": ["noise.sampler=importance", "noise.importance.warmup=1"],
    "heat regularizer": ["loss.heat_weight=0.1"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(1)
    x = torch.rand(args.batch, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    fns = {}
    for name, overrides in VARIANTS.items():
        cfg = load_config(TrainConfig, REPO / "configs" / "digits-smoke.yaml", overrides)
        torch.manual_seed(0)
        model = build.build_model(cfg, build.DataShape((1, 8, 8), True))
        opt, _ = build.build_optimizer(cfg, model)
        loss_fn, sampler = build.build_loss(cfg), build.build_sampler(cfg)
        gen = torch.Generator().manual_seed(1)
        fns[name] = (lambda m=model, o=opt, lf=loss_fn, s=sampler, g=gen: train_step(m, o, lf, x, s, generator=g))
    t = time_interleaved(fns)
    base = t["paper loss"]
    print(f"machine: {machine()}; tiny UNet energy on 8x8 digits, batch {args.batch}, 1 torch thread")
    print("| loss | ms/step | ratio to the paper's loss |")
    print("|---|---|---|")
    for name in VARIANTS:
        print(f"| {name} | {1e3 * t[name]:.1f} | {t[name] / base:.2f} |")


if __name__ == "__main__":
    main()
