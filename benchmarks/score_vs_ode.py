"""Energy log p against the PF-ODE on a UNet energy trained on 8x8 digits, at several noise levels.

Trains the digits-smoke model in-process (``--steps`` of Adam, batch 128), normalizes it on
the held-out digits (paired estimator at t_max), then for a few held-out images compares the
energy's log p(x, t) = -U(x, t) - log Z with the PF-ODE's log p(x, t) (exact Laplacian, Heun
in log t from t to t_max, Gaussian prior at t_max), for t from the training floor upward.
Prints the difference in nats/dim per image. Both sides use the same model; the energy uses
dU/dt through training (TSM), the ODE only the spatial score, so the gap measures how
consistent the learned energy is across noise levels.

    .venv/bin/python benchmarks/score_vs_ode.py [--steps 1200] [--images 6] [--heat-weight 1.0] [--form inner]
        [--ema-decay 0.999] [--batch-size 128] [--lr 1e-3] [--threads 1]

``--heat-weight`` trains with the heat-equation residual regularizer (dsm.core.losses), which asks
exactly for the consistency between dU/dt and the spatial score that this gap measures.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _common import machine

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--ode-steps", type=int, default=48)
    ap.add_argument("--heat-weight", type=float, default=0.0, help="loss.heat_weight (0: the paper's loss)")
    ap.add_argument("--form", default=None, help="model.form override (default: the smoke config's inner+c)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema-decay", type=float, default=None, help="evaluate an EMA of the weights (fit's ema_decay)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's); each image's gap depends on the float rounding")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from dsm.core.fit import fit
    from dsm.core.normalize import DataMoments, normalize
    from dsm.core.ode import ode_log_prob
    from dsm.data.inputs import iter_examples, open_input
    from dsm.plumbing.config import load_config
    from dsm.train import build
    from dsm.train.config import TrainConfig

    ws = Path(tempfile.mkdtemp(prefix="dsm-bench-ode-"))
    extra = [f"loss.heat_weight={args.heat_weight}"] + ([f"model.form={args.form}"] if args.form else [])
    cfg = build.resolve_data(load_config(TrainConfig, REPO / "configs" / "digits-smoke.yaml", extra), ws,
                             progress=False)
    train = torch.cat([torch.from_numpy(x) for _, x, _ in iter_examples(open_input(cfg.data.path))])
    held = torch.cat([torch.from_numpy(x) for _, x, _ in iter_examples(open_input(cfg.data.eval_path))])
    torch.manual_seed(0)
    model = build.build_model(cfg, build.DataShape((1, 8, 8), True))
    model = fit(model, build.build_loss(cfg), lambda n, g: train[torch.randint(0, len(train), (n,), generator=g)],
                build.build_sampler(cfg), steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                ema_decay=args.ema_decay, progress=True).model
    lz = normalize(model, held, cfg.noise.t_max)
    x = held[:args.images]
    prior = DataMoments.of(held)
    print(f"machine: {machine()}\n{args.steps} steps, batch {args.batch_size}, lr {args.lr:g}, EMA {args.ema_decay}, "
          f"form {cfg.model.form}, heat_weight {args.heat_weight:g}; log Z = {lz.value:.3f} +- {lz.stderr:.3f}\n")
    print("| t | energy - ODE, nats/dim, per image | mean |")
    print("|---|---|---|")
    for t in (cfg.noise.t_min, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0):
        tt = torch.full((len(x),), t)
        with torch.no_grad():
            e = (-model.energy(x, tt).double() - model.log_z).numpy()
        ode = ode_log_prob(model, x, prior=prior, t_start=t, t_end=cfg.noise.t_max, steps=args.ode_steps,
                           to_zero=False)  # log p(x, t), as the energy gives it
        d = (e - ode.log_prob.numpy()) / 64
        print(f"| {t:g} | {' '.join(f'{v:+.3f}' for v in d)} | {d.mean():+.3f} |")


if __name__ == "__main__":
    main()
