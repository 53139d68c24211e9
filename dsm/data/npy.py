"""A ``.npy`` array as a data set, so toy and user data need no conversion.

Accepted shapes (N is the number of samples):

- (N, d): vectors; each sample is (d,).
- (N, H, W): gray images; each sample is (1, H, W).
- (N, C, H, W) or (N, H, W, C) with C in (1, 3, 4): images; each sample is (C, H, W).
  ``layout="auto"`` takes channels-first when dimension 1 is 1, 3 or 4, else channels-last
  when the last one is; pass ``"nchw"`` or ``"nhwc"`` to say so.

uint8 arrays are 8-bit pixels (the streams divide by 255); float arrays are used as they are
(cast to float32). The file is memory-mapped, so it can be larger than memory; the streams
cut it into pieces of ``piece_size`` rows that play the part of shards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from dsm.data.shards import Piece, ShardError

Layout = Literal["auto", "nchw", "nhwc"]


def infer_layout(shape: tuple[int, ...], layout: Layout = "auto") -> tuple[str, tuple[int, ...]]:
    """(kind, sample shape) for an array of ``shape``: kind is vector, gray, nchw or nhwc."""
    if len(shape) == 2:
        return "vector", (shape[1],)
    if len(shape) == 3:
        return "gray", (1, shape[1], shape[2])
    if len(shape) == 4:
        if layout == "auto":
            layout = "nchw" if shape[1] in (1, 3, 4) else "nhwc" if shape[3] in (1, 3, 4) else "auto"
            if layout == "auto":
                raise ValueError(f"cannot tell the channel axis of shape {shape}: pass layout='nchw' or 'nhwc'")
        if layout == "nchw":
            return "nchw", tuple(shape[1:])
        if layout == "nhwc":
            return "nhwc", (shape[3], shape[1], shape[2])
        raise ValueError(f"layout must be auto, nchw or nhwc, got {layout!r}")
    raise ValueError(f"a .npy data set must be (N, d), (N, H, W) or (N, C, H, W) / (N, H, W, C); got {shape}")


class NpySource:
    """A .npy file as the streams see it: pieces of ``piece_size`` rows, samples
    (key ``<stem>:<row>``, x of the sample shape, label -1)."""

    def __init__(self, path: str | Path, *, layout: Layout = "auto", piece_size: int = 1000):
        self.path = Path(path)
        try:
            arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ShardError(self.path, f"not a readable .npy array ({e})") from None
        if arr.dtype != np.uint8 and arr.dtype.kind != "f":
            raise ShardError(self.path, f"dtype {arr.dtype}: use uint8 pixels or floating point values")
        if len(arr) == 0:
            raise ShardError(self.path, "the array is empty")
        try:
            self.kind, self.shape = infer_layout(arr.shape, layout)
        except ValueError as e:
            raise ShardError(self.path, str(e)) from None
        self.is_image = self.kind != "vector"
        self.dtype = arr.dtype
        self.num_samples = len(arr)
        self.pieces = [Piece(f"{self.path}[{a}:{min(a + piece_size, len(arr))}]", min(piece_size, len(arr) - a))
                       for a in range(0, len(arr), piece_size)]
        self._starts = {p.name: a for p, a in zip(self.pieces, range(0, len(arr), piece_size))}
        self._arr: np.ndarray | None = None

    def non_finite_rows(self, limit: int = 5, chunk: int = 65536) -> tuple[int, list[int]]:
        """(rows holding NaN or Inf, the first ``limit`` of their indices); (0, []) for uint8.
        Reads the array once, in chunks of rows (memory-mapped)."""
        if self.dtype == np.uint8:
            return 0, []
        arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        count, first = 0, []
        for a in range(0, len(arr), chunk):
            bad = np.flatnonzero(
                ~np.isfinite(np.asarray(arr[a:a + chunk]).reshape(min(chunk, len(arr) - a), -1)).all(1))
            count += len(bad)
            first += [a + int(i) for i in bad[:max(0, limit - len(first))]]
        return count, first

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arr": None}  # re-mapped in each loader worker

    def __repr__(self) -> str:
        return f"NpySource({str(self.path)!r}, {self.num_samples} x {self.shape} {self.dtype})"

    def read(self, piece: Piece, on_sample_error: Callable[[ShardError], None] | None = None
             ) -> Iterator[tuple[str, np.ndarray, int]]:
        if self._arr is None:
            self._arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        a = self._starts[piece.name]
        rows = np.asarray(self._arr[a:a + piece.count])
        if self.kind == "gray":
            rows = rows[:, None]
        elif self.kind == "nhwc":
            rows = rows.transpose(0, 3, 1, 2)
        for i in range(len(rows)):
            yield f"{self.path.stem}:{a + i}", rows[i], -1
