"""Precision agreement: log p and log Z of one trained model at fp32, tf32 and bf16.

Scores the held-out data with ``dsm.scoring.columns.score_batch`` (log p only: an empty t
grid) at each precision, and estimates log Z at ``--t`` (default: the model's t_max) with the
paired estimator as ``dsm normalize`` does, each under ``dsm.core.precision.precision_scope``. The
stored log Z is the same for all three scorings, so the log p differences are those of
U(x, 0) alone. Prints mean and max |delta log p| in bits/dim against fp32, |delta log Z| in
nats (with the fp32 estimate's standard error for scale) and the wall time of each scoring.

    .venv/bin/python benchmarks/precision_agreement.py MODEL.pt --data DATA_SPLIT [--samples N]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from _common import machine

from dsm.api import load
from dsm.core.normalize import estimate_log_z
from dsm.core.precision import PRECISIONS, precision_scope
from dsm.data.inputs import iter_examples, open_input
from dsm.scoring.columns import ScoreSpec, score_batch


def _held_out(model, data: str, samples: int | None) -> tuple[torch.Tensor, list[str], bool]:
    """Held-out examples as the model's float input (N, *event_shape), their keys, 8-bit or not."""
    inp = open_input(data)
    keys, xs = [], []
    for k, x, _ in iter_examples(inp, samples):
        keys += k
        xs.append(torch.from_numpy(x))
    return model.to_model(torch.cat(xs)), keys, inp.eight_bit


def _score(model, x, keys, eight_bit: bool, precision: str, batch_size: int) -> tuple[np.ndarray, float]:
    """NLL in bits/dim (N,) at ``precision``, and the seconds it took."""
    spec = ScoreSpec(t_grid=(), batch_size=batch_size, precision=precision)
    start, out = time.perf_counter(), []
    for a in range(0, x.shape[0], batch_size):
        out.append(score_batch(model.energy_model, x[a:a + batch_size], keys[a:a + batch_size], spec,
                               eight_bit=eight_bit)["nll_bpd"])
    return np.concatenate(out), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a trained, normalized model.pt")
    ap.add_argument("--data", required=True, help="held-out data (a shard split folder, .npy or image folder)")
    ap.add_argument("--samples", type=int, default=None, help="examples used (default: all)")
    ap.add_argument("--t", type=float, default=None, help="log Z noise variance (default: the model's t_max)")
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = load(args.model)
    x, keys, eight_bit = _held_out(model, args.data, args.samples)
    t = args.t or model.t_range[1]
    print(f"machine: {machine()}")
    print(f"model {args.model}: d = {model.dim}, {x.shape[0]} held-out examples, log Z at t = {t:g}")
    nll, log_z = {}, {}
    for p in PRECISIONS:
        nll[p], secs = _score(model, x, keys, eight_bit, p, args.batch_size)
        with precision_scope(p, x.device):
            log_z[p] = estimate_log_z(model.energy_model, x, t, keys=keys, batch_size=args.batch_size)
        print(f"{p}: mean NLL {nll[p].mean():.5f} bits/dim, scored in {secs:.2f} s; "
              f"log Z {log_z[p].value:.5f} +- {log_z[p].stderr:.5f} nats")
    for p in PRECISIONS[1:]:
        diff = np.abs(nll[p] - nll["fp32"])  # |delta log p| / (d ln 2): the same in NLL and log p
        dz = abs(log_z[p].value - log_z["fp32"].value)
        print(f"{p} - fp32: |delta log p| mean {diff.mean():.3g}, max {diff.max():.3g} bits/dim "
              f"(max {diff.max() * model.dim * math.log(2):.3g} nats per image); |delta log Z| {dz:.3g} nats "
              f"({dz / log_z['fp32'].stderr:.2g} fp32 standard errors)")


if __name__ == "__main__":
    main()
