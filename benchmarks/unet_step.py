"""UNet training-step cost: energy (dual score matching) vs score network (denoising).

Same UNet preset, same batch, both through dsm.step.train_step with Adam. The issue's
reference: the paper's own code, `paper` UNet at 32x32x3, batch 16, on this 2-core CPU:
1.80 s per energy step, 0.89 s per score step (2.0x).

    .venv/bin/python benchmarks/unet_step.py [--preset paper] [--size 32] [--batch 16]
"""

from __future__ import annotations

import argparse

import torch

from _common import machine, time_interleaved
from dsm import losses, models, noise
from dsm.step import train_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args()
    torch.manual_seed(0)
    energy = models.unet_energy(args.channels, args.size, args.preset)
    score = models.unet_score_model(args.channels, args.size, args.preset)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    energy, score = energy.to(memory_format=fmt), score.to(memory_format=fmt)
    sampler = noise.make_t_sampler("log_uniform", 1e-9, 1e3)
    x = torch.rand(args.batch, args.channels, args.size, args.size).contiguous(memory_format=fmt)
    opt_e, opt_s = torch.optim.Adam(energy.parameters(), 5e-4), torch.optim.Adam(score.parameters(), 5e-4)
    t = time_interleaved({
        "energy": lambda: train_step(energy, opt_e, losses.DualScoreMatching(), x, sampler),
        "score": lambda: train_step(score, opt_s, losses.Denoising(), x, sampler),
    }, repeats=args.repeats, inner=2, warmup=1)
    print(f"machine: {machine()}")
    print(f"preset {args.preset}, {args.channels}x{args.size}x{args.size}, batch {args.batch}"
          f"{', channels-last' if args.channels_last else ''}")
    print(f"energy step {t['energy']:.3f} s, score step {t['score']:.3f} s, ratio {t['energy'] / t['score']:.2f}")


if __name__ == "__main__":
    main()
