"""The paper's exact UNet against dsm's variant, at equal steps on a CPU data set.

Both variants share the structure and the parameter count; they differ in the three places
docs/unet.md lists (normalization epsilon, time MLP, time embedding). Each is trained with
the same seed, data, batches and t draws (t log-uniform on [t_min, 1e3]), in the energy form
``--form`` / ``--scaling`` (default ``inner+c`` / ``variance``, the form that learns on the
CPU; the paper's is ``inner`` / ``none``), with and without ``additive_normalization``.
Printed per run: the held-out NLL in bits/dim after normalizing at t = 1e3 (plain
convention, x = k/16 for digits), the held-out DSM loss, non-finite (skipped) steps, the
spread of log Z over t in {100, 333, 1000}, the energy-vs-PF-ODE gap on 8 held-out digits
(exact Laplacian) and seconds per step. The Gaussian fitted to the
training data at the same floor is the reference line.

    .venv/bin/python benchmarks/unet_variants.py [--steps 2000] [--t-min 1e-4] [--ema 0.999] \
        [--form inner --scaling none]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from _common import machine
from sklearn.datasets import load_digits

from dsm.core import losses, models, noise, normalize, toy, units
from dsm.core.fit import NonFiniteTraining, fit

T_MAX = 1e3
OFFICIAL = dict(embedding="official", norm_eps="official", time_mlp="official")
DSM = dict(embedding="linear", norm_eps="relative", time_mlp="gelu")
# (label, UNet fields, additive_normalization); the tiny preset's shape, the paper's n_freq
RUNS = [("paper (official)", OFFICIAL, False), ("paper-dsm", DSM, False),
        ("paper (official) + additive", OFFICIAL, True), ("paper-dsm + additive", DSM, True)]


def _digits():
    x = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:1500]], x[perm[1500:]]


def _held_out_loss(model, test, t_min) -> float:
    """Mean DSM loss on the held-out digits, t log-uniform, fixed noise (comparable across runs)."""
    g = torch.Generator().manual_seed(1)
    t = torch.exp(torch.empty(len(test)).uniform_(torch.log(torch.tensor(t_min)), torch.log(torch.tensor(T_MAX)),
                                                   generator=g))
    y = test + t.sqrt()[:, None, None, None] * torch.randn(test.shape, generator=g)
    s = model.scores(y, t)
    d = s.denoised(y, t)
    return float(((d - test).flatten(1).square().mean(1) / t).mean())


def run(label, fields, additive, train, test, args) -> str:
    torch.manual_seed(0)
    model = models.unet_energy(1, 8, "tiny", form=args.form, scaling=args.scaling, t_min=args.t_min, t_max=T_MAX,
                               n_freq=32, additive_normalization=additive, **fields)
    t0 = time.time()
    try:
        res = fit(model, losses.DualScoreMatching(),
                  lambda n, g: train[torch.randint(0, len(train), (n,), generator=g)],
                  noise.make_t_sampler("log_uniform", args.t_min, T_MAX), steps=args.steps, batch_size=128,
                  lr=args.lr, ema_decay=args.ema, progress=False)
    except NonFiniteTraining as e:
        return f"| {label} | diverged: {e} | | | | | |"
    per_step = (time.time() - t0) / args.steps
    m = res.model
    agree = normalize.log_z_agreement(m, test, [100.0, 333.0, 1000.0])
    normalize.normalize(m, test, T_MAX)
    nll = units.bits_per_dim(m.log_prob(test), 64)
    gap = _ode_gap(m, test, args.t_min)
    return (f"| {label} | {float(nll.mean()):.3f} +- {float(nll.std() / len(nll) ** 0.5):.3f} | "
            f"{_held_out_loss(m, test, args.t_min):.4f} | {res.skipped} | {agree.max_abs_diff:.2f} | {gap} | "
            f"{per_step:.3f} |")


def _ode_gap(model, test, t_min) -> str:
    """Energy minus PF-ODE log p at t_min on 8 held-out digits (nats/dim, the model's own
    endpoint at t_max, so log Z cancels: dsm.core.consistency)."""
    from dsm.core import consistency

    if t_min < 1e-6:  # the ODE from 1e-9 needs more steps than this benchmark should spend
        return "-"
    keys = [f"digit-{i}" for i in range(8)]
    g = consistency.ode_gap(model, test[:8], keys, t_start=t_min, t_end=T_MAX, steps=64, probes=None)
    return f"{float(g.gap.mean()):+.3f} +- {float(g.gap.std() / 8 ** 0.5):.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--form", default="inner+c", choices=["inner", "inner+c"])
    p.add_argument("--scaling", default="variance", choices=["none", "variance", "inverse_t"])
    p.add_argument("--t-min", type=float, default=1e-4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=None)
    p.add_argument("--only", default=None, help="run only the variants whose label contains this text")
    args = p.parse_args()
    train, test = _digits()
    flat = train.flatten(1).double()
    gauss = toy.Gaussian(flat.mean(0), torch.cov(flat.T) + args.t_min * torch.eye(64, dtype=torch.float64))
    print(f"machine: {machine()}")
    print(f"8x8 digits, tiny UNet shape (16 channels, 1 scale), n_freq 32, form {args.form}, scaling {args.scaling}, "
          f"t in [{args.t_min:g}, {T_MAX:g}], {args.steps} steps of batch 128, lr {args.lr:g}, EMA {args.ema}")
    print("Gaussian fit (Sigma + t_min I): "
          f"{float(units.bits_per_dim(gauss.log_prob(test.flatten(1).double()), 64).mean()):.3f} bits/dim")
    # No density of data blurred by noise of variance t_min exceeds (2 pi t_min)^(-d/2): an NLL
    # below this bound means the energy is not normalized at small t, whatever log Z says.
    print(f"bound for data blurred by t_min: NLL >= {0.5 * math.log2(2 * math.pi * args.t_min):.3f} bits/dim\n")
    print("| variant | held-out NLL (bits/dim) | held-out DSM loss | skipped steps | log Z spread, t=100..1000 (nats) "
          "| energy - ODE log p (nats/dim) | s/step |")
    print("|---|---|---|---|---|---|---|")
    for label, fields, additive in RUNS:
        if args.only and args.only not in label:
            continue
        print(run(label, fields, additive, train, test, args), flush=True)


if __name__ == "__main__":
    main()
