"""Ray Train overhead and 1 -> 2 worker scaling for `dsm train`, as ratios measured in one run.

Same data (8x8 digits shards), model (the digits-smoke config: tiny UNet energy), per-worker
batch, per-step seeding and training step (dsm.core.step.train_step) in every arm:

- ``plain``: an in-process loop over TrainStream + train_step, with ``--cpus`` torch threads;
- ``ray1``: `dsm.train.run.train` with 1 worker of ``--cpus`` CPUs on a local Ray;
- ``ray2``: 2 workers of ``--cpus`` CPUs each (global batch doubled).

The per-step time is measured the same way in every arm (batch fetch + train_step, averaged
over each log window; rank 0 logs it as ``train/step_s``), and the first window is dropped
as warm-up. Wall-clock per run is printed too: it adds Ray's fixed costs (worker start, data
pipeline start, final normalization and export). Evaluation is off; one checkpoint at the
end. Ray is started once, up front. Leave ``--cpus`` at 1 on a 2-core machine: with 2,
the trainer's threads and Ray's own processes fight over the cores.

    .venv/bin/python benchmarks/ray_overhead.py [--steps 400] [--repeats 2] [--cpus 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import machine

REPO = Path(__file__).resolve().parents[1]


def _cfg(ws: Path, steps: int, workers: int, cpus: float, batch: int, name: str, log_every: int):
    from dsm.plumbing.config import load_config
    from dsm.train.build import resolve_data
    from dsm.train.config import TrainConfig

    over = [f"steps={steps}", f"checkpoint.every={steps}", "eval.enabled=false", f"log_every={log_every}",
            f"scaling.workers={workers}", f"scaling.cpus_per_worker={cpus}", f"data.batch_size={batch * workers}",
            f"name={name}", "scaling.max_failures=0", "tracking.experiment=bench"]
    return resolve_data(load_config(TrainConfig, REPO / "configs" / "digits-smoke.yaml", over), ws, progress=False)


def plain_loop(cfg, threads: int) -> tuple[float, list[float]]:
    """(wall seconds, seconds per step in each log window) for cfg.steps steps in-process,
    built and timed exactly as a worker does (batch fetch + train_step)."""
    from dsm.core.seeding import key_seed
    from dsm.core.step import train_step
    from dsm.core.units import to_unit_float
    from dsm.data.stream import TrainStream
    from dsm.train import build
    from dsm.train.loop import train_batches

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    shape = build.data_shape(build.open_source(cfg.data.path))
    model = build.build_model(cfg, shape)
    opt, sched = build.build_optimizer(cfg, model)
    stream = TrainStream(cfg.data.path, batch_size=cfg.per_worker_batch, seed=cfg.seed, rank=0, world_size=1,
                         loader_workers=0, shuffle_buffer=cfg.data.shuffle_buffer)
    batches = train_batches(stream, 0, 0)
    loss_fn, sampler = build.build_loss(cfg), build.build_sampler(cfg)
    windows, busy = [], 0.0
    for step in range(cfg.steps):
        ts = time.perf_counter()
        x = to_unit_float(next(batches)["x"])
        gen = torch.Generator().manual_seed(key_seed(step, f"train/{cfg.seed}/0"))
        train_step(model, opt, loss_fn, x, sampler, generator=gen, scheduler=sched)
        busy += time.perf_counter() - ts
        if (step + 1) % cfg.log_every == 0:
            windows.append(busy / cfg.log_every)
            busy = 0.0
    return time.perf_counter() - t0, windows


def ray_run(cfg, ws: Path) -> tuple[float, list[float]]:
    """(wall seconds of the fit, seconds per step in each log window, as rank 0 measured them)."""
    from mlflow.tracking import MlflowClient

    from dsm.runtime.tracking import tracking_uri
    from dsm.train.run import plan, train

    p = plan(cfg, ws, progress=False)
    t0 = time.perf_counter()
    train(p, log_to_driver=False)
    wall = time.perf_counter() - t0
    client = MlflowClient(tracking_uri(ws))
    run = client.search_runs([client.get_experiment_by_name("bench").experiment_id],
                             filter_string=f"tags.`dsm.run_name` = '{p.name}'")[0]
    hist = sorted(client.get_metric_history(run.info.run_id, "train/step_s"), key=lambda m: m.step)
    return wall, [m.value for m in hist]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--windows", type=int, default=4, help="log windows per run; the first is warm-up")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=1, help="CPUs (= torch threads) of the 1-worker and plain arms")
    ap.add_argument("--batch", type=int, default=64, help="per-worker batch")
    args = ap.parse_args()
    for k, v in {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}.items():
        os.environ.setdefault(k, v)
    import ray

    from dsm.runtime.cluster import LOCAL_RAY_ENV, OBJECT_STORE_BYTES

    for k, v in LOCAL_RAY_ENV.items():
        os.environ.setdefault(k, v)
    ncpu = os.cpu_count() or 2
    ray.init(num_cpus=ncpu, object_store_memory=OBJECT_STORE_BYTES, log_to_driver=False)
    ws = Path(tempfile.mkdtemp(prefix="dsm-bench-ray-"))
    every = args.steps // args.windows
    step_s: dict[str, list[float]] = {"plain": [], "ray1": [], "ray2": []}
    wall: dict[str, list[float]] = {"plain": [], "ray1": [], "ray2": []}
    for r in range(args.repeats):  # interleaved, so drift in machine speed hits every arm alike
        for arm, workers in (("plain", 1), ("ray1", 1), ("ray2", 2)):
            cfg = _cfg(ws, args.steps, workers, args.cpus, args.batch, f"{arm}-{r}", every)
            w, per = plain_loop(cfg, args.cpus) if arm == "plain" else ray_run(cfg, ws)
            wall[arm].append(w)
            step_s[arm] += per[1:]  # drop the warm-up window
        print({k: round(v[-1], 1) for k, v in wall.items()}, flush=True)
    ray.shutdown()
    med = {k: statistics.median(v) for k, v in step_s.items()}
    print(f"\nmachine: {machine()}")
    print(f"per-worker batch {args.batch} of 1x8x8 digits, tiny UNet energy, {args.cpus} CPU(s) per worker; "
          f"{args.repeats} x {args.steps} steps per arm\n")
    print("| arm | s/step (median window, rank 0) | images/s | wall s per run (median) |")
    print("|---|---|---|---|")
    for k, workers in (("plain", 1), ("ray1", 1), ("ray2", 2)):
        print(f"| {k} | {med[k] * 1e3:.1f} ms | {args.batch * workers / med[k]:.0f} | "
              f"{statistics.median(wall[k]):.1f} |")
    print(f"\nRay Train overhead per step (ray1 / plain): {med['ray1'] / med['plain']:.3f}")
    print(f"whole run incl. worker start and export (ray1 / plain wall-clock): "
          f"{statistics.median(wall['ray1']) / statistics.median(wall['plain']):.3f}")
    print(f"1 -> 2 workers ({args.cpus} CPU each), images/s ratio: {(2 / med['ray2']) / (1 / med['ray1']):.3f}")


if __name__ == "__main__":
    main()
