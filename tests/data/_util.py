"""Helpers for the data tests: real shards written by dsm's ShardWriter (webdataset's TarWriter)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsm.data.shards import ShardWriter


def write_shards(folder: Path, n: int, *, shape: tuple[int, int, int] = (3, 8, 8), shard_size: int = 10,
                 split: str = "train", seed: int = 0) -> dict[str, np.ndarray]:
    """Write n random uint8 images of (C, H, W) ``shape``; return {key: image (H, W, C)}."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    images = rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)
    out = {}
    with ShardWriter(folder, split, shape=shape, source="test", shard_size=shard_size) as wr:
        for i in range(n):
            out[wr.write(images[i], label=i % 7, meta={"source_id": f"test:{i}"})] = images[i]
    return out
