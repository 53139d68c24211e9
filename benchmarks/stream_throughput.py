"""Streaming throughput: TrainStream from an S3 server (moto, on 127.0.0.1) against the same shards on local disk.

Two shard layouts, written to a temporary folder and uploaded to a bucket of a moto server
that this script starts (and stops) itself:

- ``digits``: scikit-learn's 8x8 digits as ``dsm data prepare digits`` writes them (1438
  training images, the default shard size: 16 shards of about 90 images);
- ``64x64``: synthetic 64x64 colour PNG crops of the bundled photos, shards of 1000, the
  layout of benchmarks/loader_throughput.py (``--images``, default 3000).

Each (layout, loader workers) pair streams the split folder through
dsm.data.stream.TrainStream + make_loader (resampled, shuffle buffer 1000, flips, batch 128),
once from the local folder and once from ``s3://bucket/<layout>/train``, alternating, and
reports images/s per loader core and the ratio S3/local. A remote shard is fetched whole (one
GET) and then decoded, so it also times one shard's fetch alone (ms per GET vs a local read).
moto runs on the same cores as the loader: this measures the client's and the protocol's
CPU cost, not network bandwidth.

The S3 rate is then set against what a training step consumes per worker on this CPU: for
digits, the digits-smoke tiny UNet energy step (batch 64, 1 torch thread, dsm.core.step.train_step),
timed here between the loader runs (so under the same load); for 64x64, the ``paper`` UNet
energy step measured by loader_throughput.py (``--train-64``, images/s; timing it here would
take minutes).

The environment variables (fake credentials, the endpoint) are set in this process only.

    cd benchmarks && ../.venv/bin/python stream_throughput.py [--seconds 4] [--repeats 2] [--workers 0 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from _common import machine, time_interleaved
from loader_throughput import loader_rate, make_shards

REPO = Path(__file__).resolve().parents[1]
BATCH = 128


@contextmanager
def s3_server(tmp: Path):
    """A moto S3 server on a free port, with this process's environment pointing at it (fake
    credentials; ~/.aws ignored); both undone on exit."""
    sys.path.insert(0, str(REPO))
    from tests import servers

    port = servers.free_port()
    empty = tmp / "aws-empty"
    empty.write_text("")
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "fake-benchmark-key",
           "AWS_SECRET_ACCESS_KEY": "fake-benchmark-secret", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": str(empty), "AWS_SHARED_CREDENTIALS_FILE": str(empty)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    server = servers.S3Server(port, tmp / "moto.log")
    server.start()
    try:
        yield servers
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def digits_split(folder: Path) -> Path:
    from dsm.data.sources import PrepareConfig, prepare

    prepare("digits", folder, PrepareConfig(splits=["train"]), progress=False)
    return folder / "train"


def shard_fetch_ms(local_split: Path, url: str, repeats: int = 5) -> tuple[float, float, int]:
    """(ms per local read, ms per S3 GET, bytes) of the split's first shard, read whole."""
    from dsm.data.shards import Manifest
    from dsm.plumbing.store import Location

    name = Manifest.load(Location.of(local_split)).shards[0].file
    remote = Location.of(f"{url}/{name}")
    remote.read_bytes()  # warm: client, connection
    times = time_interleaved({"local": lambda: (local_split / name).read_bytes(), "s3": remote.read_bytes},
                             repeats=repeats, inner=2, warmup=1)
    return 1e3 * times["local"], 1e3 * times["s3"], (local_split / name).stat().st_size


def digits_train_step(batch: int = 64):
    """A function that times the digits-smoke tiny UNet energy's training step (1 torch thread,
    dsm.core.step.train_step) and returns its images/s."""
    from dsm.core.step import train_step
    from dsm.plumbing.config import load_config
    from dsm.train import build
    from dsm.train.config import TrainConfig

    cfg = load_config(TrainConfig, REPO / "configs" / "digits-smoke.yaml", [])
    torch.manual_seed(0)
    model = build.build_model(cfg, build.DataShape((1, 8, 8), True))
    opt, _ = build.build_optimizer(cfg, model)
    loss_fn, sampler = build.build_loss(cfg), build.build_sampler(cfg)
    x = torch.rand(batch, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)

    def rate() -> float:
        t = time_interleaved({"step": lambda: train_step(model, opt, loss_fn, x, sampler, generator=gen)},
                             repeats=3, inner=3, warmup=1)["step"]
        return batch / t
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3000, help="synthetic 64x64 images to write")
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per loader run")
    p.add_argument("--repeats", type=int, default=2, help="alternating local/S3 runs per configuration (median)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    p.add_argument("--train-64", type=float, default=0.73,
                   help="images/s of the paper UNet energy step at 3x64x64 on this CPU (docs/benchmarks.md, "
                        "'Data loader vs training consumption')")
    args = p.parse_args()
    print(f"machine: {machine()}")
    torch.set_num_threads(1)  # the main process is one core too when it does the loading
    best: dict[str, dict[str, float]] = {"local": {}, "s3": {}}
    step_rate, step_rates = digits_train_step(), []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_s, s3_server(Path(tmp_s)) as servers:
        tmp = Path(tmp_s)
        layouts = {"digits": digits_split(tmp / "digits"), "64x64": make_shards(tmp / "rgb64", args.images,
                                                                                 "natural")[0]}
        bucket = servers.make_bucket()
        urls = {}
        for name, split in layouts.items():
            urls[name] = f"{bucket}/{name}/train"
            servers.upload(split, urls[name])
        print(f"data written and uploaded in {time.perf_counter() - t_start:.1f} s")
        print("| layout | images x shards | shard | local read (ms) | S3 GET (ms) | loader workers "
              "| local images/s per core | S3 images/s per core | S3 / local |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, split in layouts.items():
            from dsm.data.shards import Manifest
            from dsm.plumbing.store import Location

            man = Manifest.load(Location.of(split))
            local_ms, s3_ms, size = shard_fetch_ms(split, urls[name])
            per_shard = man.num_samples // len(man.shards)
            for w in args.workers:
                got: dict[str, list[float]] = {"local": [], "s3": []}
                for _ in range(args.repeats):
                    step_rates.append(step_rate())  # beside the loader runs: the same load on the machine
                    got["local"].append(loader_rate(split, w, BATCH, args.seconds) / max(1, w))
                    got["s3"].append(loader_rate(urls[name], w, BATCH, args.seconds) / max(1, w))
                loc, s3 = statistics.median(got["local"]), statistics.median(got["s3"])
                for src, rate in (("local", loc), ("s3", s3)):
                    best[src][name] = max(best[src].get(name, 0.0), rate)
                print(f"| {name} | {man.num_samples} x {len(man.shards)} | {size / 2**20:.2f} MiB, ~{per_shard} images "
                      f"| {local_ms:.2f} | {s3_ms:.1f} | {w} | {loc:.0f} | {s3:.0f} | {s3 / loc:.2f} |", flush=True)
    train = {"digits": statistics.median(step_rates), "64x64": args.train_64}
    what = {"digits": f"digits-smoke tiny UNet energy step, batch 64, 1 torch thread, timed here between the "
                      f"loader runs: median of {len(step_rates)}, {min(step_rates):.0f}-{max(step_rates):.0f}",
            "64x64": "paper UNet energy step, 3x64x64, batch 16 (--train-64, from docs/benchmarks.md)"}
    print("best images/s per core over the loader-worker counts, against a training step's consumption per worker:")
    for name, rate in train.items():
        s3, loc = best["s3"][name] / rate, best["local"][name] / rate
        print(f"- {name}: S3 {best['s3'][name]:.0f} vs {rate:.2f} images/s ({what[name]}): {s3:.1f}x, "
              f"{'at least' if s3 >= 3 else 'BELOW'} 3x (local disk: {loc:.1f}x)")
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
