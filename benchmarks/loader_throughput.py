"""Loader throughput: images/s per core for 64x64 colour PNG shards, against the energy training step.

Writes synthetic shards to a temporary folder (64x64 colour crops of the photos that ship with
scikit-image & co., box-downsampled from 128x128 so that PNG sizes resemble ImageNet64's; or
uniform noise, the incompressible worst case), then streams them through
dsm.data.stream.TrainStream (resampled, shuffle buffer 1000, flips) and make_loader with 0, 1
and 2 loader workers. A loader worker is one core (one torch thread each); 0 workers means
the main process does everything, also one core.

When ``dsm.core.models.unet_energy`` exists it also times the energy training step
(``dsm.core.step.train_step``, DualScoreMatching, log-uniform t on [1e-9, 1e3], batch 16 of 3x64x64,
preset "paper") and prints loader images/s per core / training images/s: above 1, one loader
core keeps up with one trainer.

    .venv/bin/python benchmarks/loader_throughput.py [--images 4096] [--seconds 8] [--content noise]
"""

from __future__ import annotations

import argparse
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine


def make_shards(folder: Path, n: int, content: str) -> tuple[Path, float]:
    """n 64x64 colour images as shards of 1000; returns (split folder, mean PNG bytes per image)."""
    from dsm.data.shards import ShardWriter

    if content == "natural":
        from dsm.data.images import box_downsample
        from dsm.data.sources import PrepareConfig, load_patches

        images = box_downsample(load_patches("train", PrepareConfig(patch=128, count=n, seed=0)).images, 64)
    else:
        images = np.random.default_rng(0).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    split = folder / "train"
    with ShardWriter(split, "train", shape=(3, 64, 64), source=f"synthetic {content}", shard_size=1000) as w:
        for i, img in enumerate(images):
            w.write(img, 0, {"source_id": f"synthetic:{i}"})
    with tarfile.open(split / "train-000000.tar") as t:
        sizes = [m.size for m in t.getmembers() if m.name.endswith(".png")]
    return split, sum(sizes) / len(sizes)


def loader_rate(split: Path, workers: int, batch: int, seconds: float, warmup: int = 10) -> float:
    """Images/s through TrainStream + DataLoader, after ``warmup`` batches (worker start, buffer fill)."""
    from dsm.data.stream import TrainStream, make_loader

    stream = TrainStream(split, batch_size=batch, batches_per_epoch=10**6, shuffle_buffer=1000, flips=True, seed=0)
    n, t0 = 0, None
    for i, b in enumerate(make_loader(stream, num_workers=workers)):
        if i == warmup:
            t0 = time.perf_counter()
        elif i > warmup:
            n += len(b["key"])
            if time.perf_counter() - t0 > seconds:
                break
    return n / (time.perf_counter() - t0)


def train_rate(batch: int = 16, repeats: int = 3) -> tuple[float, int] | None:
    """(training images/s, parameter count) of the paper UNet energy, or None if it does not exist yet."""
    try:
        from dsm.core.models import unet_energy
    except ImportError:
        return None
    from dsm.core import losses, noise
    from dsm.core.step import train_step

    torch.manual_seed(0)
    model = unet_energy(3, 64, preset="paper")
    opt = torch.optim.Adam(model.parameters(), 5e-4)
    sampler = noise.make_t_sampler("log_uniform", 1e-9, 1e3)
    x = torch.rand(batch, 3, 64, 64)
    loss = losses.DualScoreMatching()
    train_step(model, opt, loss, x, sampler)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        train_step(model, opt, loss, x, sampler)
        times.append(time.perf_counter() - t0)
    return batch / float(np.median(times)), sum(p.numel() for p in model.parameters())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4096, help="synthetic images to write")
    p.add_argument("--content", choices=["natural", "noise"], default="natural")
    p.add_argument("--batch", type=int, default=128, help="loader batch size")
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per loader configuration")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--no-train", action="store_true", help="skip the training-step timing")
    args = p.parse_args()
    print(f"machine: {machine()}")
    train_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the main process is one core too when it does the loading
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        split, png_bytes = make_shards(Path(tmp), args.images, args.content)
        print(f"wrote {args.images} {args.content} 64x64x3 PNG images ({png_bytes / 1024:.1f} KiB each) "
              f"in {time.perf_counter() - t0:.1f} s")
        print("| loader workers | cores | images/s | images/s per core |")
        print("|---|---|---|---|")
        per_core = []
        for w in args.workers:
            rate = loader_rate(split, w, args.batch, args.seconds)
            cores = max(1, w)
            per_core.append(rate / cores)
            print(f"| {w} | {cores} | {rate:.0f} | {rate / cores:.0f} |")
    best = max(per_core)
    torch.set_num_threads(train_threads)
    if args.no_train:
        print(f"loader: {best:.0f} images/s per core; training step skipped (--no-train).")
        return
    tr = train_rate()
    if tr is None:
        print(f"loader: {best:.0f} images/s per core. Energy training step: pending "
              "(dsm.core.models.unet_energy not available); ratio pending.")
        return
    rate, n_params = tr
    print(f"energy training step (UNet 'paper', {n_params / 1e6:.2f}M parameters, batch 16 of 3x64x64, "
          f"{torch.get_num_threads()} torch threads): {rate:.2f} images/s")
    print(f"ratio loader images/s per core / training images/s: {best / rate:.1f}")


if __name__ == "__main__":
    main()
