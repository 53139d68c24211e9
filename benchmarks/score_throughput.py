"""Scoring throughput: `dsm score`'s Ray Data job against a plain in-process loop, and a d_eff
grid against a single log p, as ratios measured in one run.

Model: a UNet energy (``--preset``, default small) at 16x16 gray, random weights (the cost
does not depend on training), normalized by fiat. Data: ``--images`` 8-bit images in a .npy.

- ``plain``: ``dsm.scoring.columns.score_batch`` in a loop, in this process, ``--threads``;
- ``ray``: ``dsm.scoring.job.score`` with ``--actors`` actors (0.5 CPU, 1 thread each) on a
  local Ray started up front; the same columns, written as parquet parts.

Both compute the same columns (log p and the d_eff/MSE grid, ``--t-levels`` x ``--noise``).
A third timing, in-process, is log p alone, for the ratio "d_eff grid / one log p".

    .venv/bin/python benchmarks/score_throughput.py [--images 2000] [--actors 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine


def _bundle(folder: Path, preset: str, size: int) -> Path:
    from dsm.core.bundle import save_bundle
    from dsm.plumbing.config import load_config
    from dsm.train import build
    from dsm.train.config import TrainConfig

    x = folder / "ref.npy"
    np.save(x, np.zeros((2, size, size), np.uint8))
    cfg = load_config(TrainConfig, None, [f"data.path={x}", f"data.eval_path={x}", f"model.preset={preset}",
                                          "model.form=inner+c", "model.scaling=variance", "scaling.workers=1"])
    torch.manual_seed(0)
    model = build.build_model(cfg, build.DataShape((1, size, size), True))
    return save_bundle(folder / "model.pt", model, cfg, (1, size, size), True, normalization={"value": 0.0})


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--t-levels", type=int, default=5)
    ap.add_argument("--noise", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the plain loop")
    return ap.parse_args()


def main() -> None:
    args = _args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    import dsm.api
    from dsm.runtime.cluster import OBJECT_STORE_BYTES
    from dsm.scoring.columns import ScoreSpec, parse_t_grid, score_batch
    from dsm.scoring.job import score

    folder = Path(tempfile.mkdtemp(prefix="dsm-bench-score-"))
    model_path = _bundle(folder, args.preset, args.size)
    data = folder / "x.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (args.images, args.size, args.size), dtype=np.uint8))
    spec = ScoreSpec(t_grid=parse_t_grid(f"1e-4:1e2:{args.t_levels}"), n_noise=args.noise, batch_size=args.batch)

    torch.set_num_threads(args.threads)
    m = dsm.api.load(model_path)
    x = torch.from_numpy(np.load(data)).float().div(255)[:, None]
    keys = [f"{i:06d}" for i in range(len(x))]
    t0 = time.perf_counter()
    for a in range(0, len(x), args.batch):
        score_batch(m.energy_model, x[a:a + args.batch], keys[a:a + args.batch], spec, eight_bit=True)
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    for a in range(0, len(x), args.batch):
        m.log_prob(x[a:a + args.batch])
    logp_only = time.perf_counter() - t0

    ray.init(num_cpus=os.cpu_count() or 2, object_store_memory=OBJECT_STORE_BYTES, log_to_driver=False)
    t0 = time.perf_counter()
    score(str(model_path), data, folder / "out", spec, actors=args.actors)
    via_ray = time.perf_counter() - t0
    ray.shutdown()

    _report(args, plain, via_ray, logp_only)


def _report(args: argparse.Namespace, plain: float, via_ray: float, logp_only: float) -> None:
    """The table of images/s per arm (seconds for all images in), and the two ratios."""
    n = args.images
    print(f"machine: {machine()}")
    print(f"{args.preset} UNet energy at 1x{args.size}x{args.size}, {n} images, batch {args.batch}, "
          f"t grid {args.t_levels} levels x K={args.noise}\n")
    print("| arm | images/s |")
    print("|---|---|")
    print(f"| plain loop, {args.threads} threads, log p + d_eff grid | {n / plain:.1f} |")
    print(f"| Ray Data job, {args.actors} actors x 1 thread, log p + d_eff grid, parquet | {n / via_ray:.1f} |")
    print(f"| plain loop, log p only | {n / logp_only:.1f} |")
    print(f"\nRay Data job / plain loop, images/s: {plain / via_ray:.3f} "
          f"(overhead {100 * (via_ray / plain - 1):+.1f}%)")
    print(f"d_eff grid + log p / log p alone, time: {plain / logp_only:.1f}x "
          f"({args.t_levels} levels x K={args.noise} = {args.t_levels * args.noise} score evaluations per image)")


if __name__ == "__main__":
    main()
