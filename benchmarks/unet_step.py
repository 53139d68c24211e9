"""UNet training-step cost: energy (dual score matching) vs score network (denoising).

Same UNet preset, same batch, both through dsm.core.step.train_step with Adam. The
reference: the paper's own code, `paper` UNet at 32x32x3, batch 16, on a 2-core CPU:
1.80 s per energy step, 0.89 s per score step (2.0x). ``--stock`` also times both models
with PyTorch's stock convolutions, GELU and var_mean (dsm.core.nets.stock), in the same run, so
that what dsm's fast ops save is a ratio on one machine. ``--compare PRESET`` also times the
energy step of another preset of the same size (``paper-dsm``: dsm's variant of the paper's
network), interleaved in the same run.

    .venv/bin/python benchmarks/unet_step.py [--preset paper] [--size 32] [--batch 16] [--stock] [--compare paper-dsm]
"""

from __future__ import annotations

import argparse

import torch
from _common import machine, time_interleaved

from dsm.core import losses, models, noise
from dsm.core.nets.stock import with_stock_ops
from dsm.core.step import train_step


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--stock", action="store_true", help="also time the stock-ops twins")
    p.add_argument("--compare", default=None, metavar="PRESET", help="also time this preset's energy step")
    p.add_argument("--profile", action="store_true",
                   help="also split each step into convolution kernels and the rest (torch.profiler)")
    return p.parse_args()


def main() -> None:
    args = _args()
    torch.manual_seed(0)
    energy = models.unet_energy(args.channels, args.size, args.preset)
    score = models.unet_score_model(args.channels, args.size, args.preset)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    energy, score = energy.to(memory_format=fmt), score.to(memory_format=fmt)
    sampler = noise.make_t_sampler("log_uniform", 1e-9, 1e3)
    x = torch.rand(args.batch, args.channels, args.size, args.size).contiguous(memory_format=fmt)
    opt_e, opt_s = torch.optim.Adam(energy.parameters(), 5e-4), torch.optim.Adam(score.parameters(), 5e-4)
    fns = {
        "energy": lambda: train_step(energy, opt_e, losses.DualScoreMatching(), x, sampler),
        "score": lambda: train_step(score, opt_s, losses.Denoising(), x, sampler),
    }
    if args.stock:
        stock_e, stock_s = with_stock_ops(energy), with_stock_ops(score)
        opt_se, opt_ss = torch.optim.Adam(stock_e.parameters(), 5e-4), torch.optim.Adam(stock_s.parameters(), 5e-4)
        fns["stock energy"] = lambda: train_step(stock_e, opt_se, losses.DualScoreMatching(), x, sampler)
        fns["stock score"] = lambda: train_step(stock_s, opt_ss, losses.Denoising(), x, sampler)
    if args.compare:
        other = models.unet_energy(args.channels, args.size, args.compare).to(memory_format=fmt)
        opt_o = torch.optim.Adam(other.parameters(), 5e-4)
        fns[f"{args.compare} energy"] = lambda: train_step(other, opt_o, losses.DualScoreMatching(), x, sampler)
    _report(args, fns, time_interleaved(fns, repeats=args.repeats, inner=2, warmup=1))


def _report(args: argparse.Namespace, fns: dict, t: dict[str, float]) -> None:
    """Seconds per step of each arm ``t`` and their ratios; with --profile, the convolutions' share."""
    print(f"machine: {machine()}")
    print(f"preset {args.preset}, {args.channels}x{args.size}x{args.size}, batch {args.batch}"
          f"{', channels-last' if args.channels_last else ''}")
    print(f"energy step {t['energy']:.3f} s, score step {t['score']:.3f} s, ratio {t['energy'] / t['score']:.2f}")
    if args.stock:
        print(f"stock ops: energy step {t['stock energy']:.3f} s, score step {t['stock score']:.3f} s, "
              f"ratio {t['stock energy'] / t['stock score']:.2f}")
        print(f"fast ops speed-up: energy {t['stock energy'] / t['energy']:.2f}x, "
              f"score {t['stock score'] / t['score']:.2f}x")
    if args.compare:
        c = t[f"{args.compare} energy"]
        print(f"{args.compare} energy step {c:.3f} s: {args.preset} / {args.compare} = {t['energy'] / c:.2f}")
    if args.profile:
        conv = {k: _conv_share(fn) for k, fn in fns.items()}
        for k, (c, rest) in conv.items():
            print(f"profile, {k} step: convolutions {c * 1e3:.0f} ms, everything else {rest * 1e3:.0f} ms")
        print(f"convolutions alone: energy/score {conv['energy'][0] / conv['score'][0]:.2f}; "
              f"the rest: {conv['energy'][1] / conv['score'][1]:.2f}")


def _conv_share(fn, steps: int = 3) -> tuple[float, float]:
    """Seconds per step in convolution kernels and in everything else (self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    conv = rest = 0.0
    for ev in prof.key_averages():
        if ev.key.startswith("aten::"):
            if "convolution" in ev.key:
                conv += ev.self_cpu_time_total
            else:
                rest += ev.self_cpu_time_total
    return conv / steps / 1e6, rest / steps / 1e6


if __name__ == "__main__":
    main()
