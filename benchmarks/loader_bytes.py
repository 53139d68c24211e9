"""Loader bytes per batch and throughput: uint8 batches (converted on the consumer's device)
against float32 batches (k/255 converted in the loader worker, as dsm did before).

For the digits (1x8x8, ``dsm data prepare digits``) and synthetic 3x64x64 PNG shards (the
natural crops of benchmarks/loader_throughput.py), at batch 16 and 128, it streams
TrainStream (resampled, shuffle buffer 1000, flips) through make_loader with one loader worker
and reports, from the tensors the DataLoader yields, the bytes of ``x`` per batch (what crosses
the workers' shared memory and, on a GPU, the host-to-device copy), and the images/s of each
variant, timed in alternation (``--rounds`` rounds of ``--seconds`` each; the median is
reported). It also times :func:`dsm.core.units.to_unit_float` on the CPU for one batch, the
conversion that a CPU consumer now does in its own process.

    .venv/bin/python benchmarks/loader_bytes.py [--images 1024] [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import machine
from loader_throughput import make_shards


class FloatInWorker(torch.utils.data.IterableDataset):
    """The loader before: the same stream, with x converted to float32 in the loader worker."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream

    def __iter__(self):
        from dsm.core.units import to_unit_float

        for b in self.stream:
            yield {**b, "x": to_unit_float(b["x"])}


def loader(split: Path, batch: int, variant: str):
    from dsm.data.stream import TrainStream, make_loader

    stream = TrainStream(split, batch_size=batch, batches_per_epoch=10**6, shuffle_buffer=1000, flips=True, seed=0)
    return make_loader(stream if variant == "uint8" else FloatInWorker(stream), num_workers=1)


def rate(split: Path, batch: int, variant: str, seconds: float, warmup: int = 5) -> tuple[float, int]:
    """(images/s after ``warmup`` batches, bytes of x per batch) through one loader worker."""
    n, t0, nbytes = 0, None, 0
    for i, b in enumerate(loader(split, batch, variant)):
        if i == warmup:
            t0 = time.perf_counter()
            nbytes = b["x"].numel() * b["x"].element_size()
        elif i > warmup:
            n += len(b["key"])
            if time.perf_counter() - t0 > seconds:
                break
    return n / (time.perf_counter() - t0), nbytes


def convert_ms(shape: tuple[int, ...], batch: int) -> float:
    """Median ms of to_unit_float on the CPU for one uint8 batch."""
    from dsm.core.units import to_unit_float

    x = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        to_unit_float(x)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1024, help="synthetic 64x64 images to write")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per run")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per (data, batch)")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine()}")
    from dsm.data.sources import PrepareConfig, prepare

    with tempfile.TemporaryDirectory() as tmp:
        prepare("digits", Path(tmp) / "digits", PrepareConfig(splits=["train"]), progress=False)
        splits = {"digits 1x8x8": (Path(tmp) / "digits" / "train", (1, 8, 8)),
                  "3x64x64": (make_shards(Path(tmp), args.images, "natural")[0], (3, 64, 64))}
        print("| data | batch | x bytes/batch uint8 | float32 (before) | images/s uint8 | images/s float32 "
              "| to_unit_float on CPU (ms/batch) |")
        print("|---|---|---|---|---|---|---|")
        for name, (split, shape) in splits.items():
            for batch in (16, 128):
                got: dict[str, list[float]] = {"uint8": [], "float32": []}
                size = {}
                for _ in range(args.rounds):
                    for variant in got:
                        r, size[variant] = rate(split, batch, variant, args.seconds)
                        got[variant].append(r)
                med = {k: statistics.median(v) for k, v in got.items()}
                print(f"| {name} | {batch} | {size['uint8']:,} | {size['float32']:,} | {med['uint8']:.0f} "
                      f"| {med['float32']:.0f} | {convert_ms(shape, batch):.3f} |")


if __name__ == "__main__":
    main()
