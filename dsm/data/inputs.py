"""What ``dsm score`` and ``dsm normalize`` read: shards, a ``.npy``, or a folder of images.

Each input is a list of *pieces* (a shard, a row range of a .npy, a chunk of image files),
the unit of work and of resumption: one parquet part per piece. Rows come out as
(key, x (event shape) float32, label):

- shards (a split folder with ``manifest.json``): the shard keys, x = k/255, the stored label;
- ``.npy``: the key is the row index as a zero-padded decimal string (``"000042"``), float
  data as stored and uint8 as k/255, label -1;
- an image folder (PNG/JPEG, any depth): the key is the path relative to the folder, the
  label -1; every image must already have the model's size (convert others with
  ``dsm data convert folder``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dsm.core.units import to_unit_float
from dsm.data.npy import NpySource
from dsm.data.shards import MANIFEST, Piece, ShardError, ShardSource
from dsm.data.stream import is_eight_bit
from dsm.plumbing.store import Location, is_remote

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class Input:
    """A readable input: its pieces, event shape, and whether it holds 8-bit images."""

    path: Path | Location  # a Location only for shards at a URL
    kind: str  # shards | npy | folder
    pieces: list[Piece]
    shape: tuple[int, ...]
    eight_bit: bool
    _source: object = None

    @property
    def num_samples(self) -> int:
        return sum(p.count for p in self.pieces)

    def check_finite(self) -> None:
        """Refuse float data holding NaN or Inf, naming the file, the count and the first keys:
        a score of such a row is NaN, and NaN rows would poison every mean of the summary.
        (8-bit images cannot hold either; .npy floats are read once here, before Ray starts.)"""
        if self.kind != "npy":
            return
        count, first = self._source.non_finite_rows()
        if count:
            width = max(6, len(str(self._source.num_samples - 1)))
            keys = ", ".join(f"{i:0{width}d}" for i in first)
            raise ValueError(f"{self.path}: {count} of {self.num_samples} rows hold NaN or Inf "
                             f"(first keys: {keys}{' ...' if count > len(first) else ''}); "
                             "drop or repair them before scoring")

    def digest(self) -> str:
        """What the data *is*, for telling a resumed scoring job from a new one (sha256, hex):

        - shards: of ``manifest.json``, which records every shard's size and sha256;
        - .npy: of the file;
        - image folder: of every image's relative name, size and modification time (hashing the
          pixels of a large folder on every run would cost more than the check is worth).
        """
        import hashlib

        from dsm.plumbing.fileio import sha256_file

        if self.kind == "shards":
            return hashlib.sha256((self._source.location / MANIFEST).read_bytes()).hexdigest()
        if self.kind == "npy":
            return sha256_file(self.path)
        h = hashlib.sha256()
        for piece in self.pieces:
            for rel in piece.name.split("\n"):
                st = (self.path / rel).stat()
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def read(self, index: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Piece ``index`` as (keys, x (n, *shape) float32, labels (n,) int64)."""
        piece = self.pieces[index]
        if self.kind == "folder":
            return _read_images(self.path, piece, self.shape)
        keys, xs, labels = [], [], []
        for key, arr, label in self._source.read(piece):
            keys.append(key)
            xs.append(arr)
            labels.append(label)
        x = np.stack(xs)
        x = to_unit_float(torch.from_numpy(x)).numpy()
        if self.kind == "npy":
            width = max(6, len(str(self._source.num_samples - 1)))
            keys = [f"{int(k.rsplit(':', 1)[1]):0{width}d}" for k in keys]
        return keys, x, np.asarray(labels, dtype=np.int64)


def open_input(path: str | Path, piece_size: int = 1000) -> Input:
    """Open shards, a .npy or an image folder. Errors name the path; an empty input is an error.
    Shards may also be a URL (dsm.plumbing.store); a .npy and an image folder must be local."""
    if is_remote(path):
        return _open_remote(Location.of(path))
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise ValueError(f"{p}: no such data (give a shard split folder, a .npy, or an image folder)")
    if p.suffix == ".npy":
        src = NpySource(p, piece_size=piece_size)
        return Input(p, "npy", src.pieces, tuple(src.shape), is_eight_bit(src), src)
    if p.name == "manifest.json":
        p = p.parent
    if (p / "manifest.json").is_file():
        try:
            src = ShardSource(p)
        except ShardError as e:
            raise ValueError(str(e)) from None
        return Input(p, "shards", src.pieces, tuple(src.shape), is_eight_bit(src), src)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not files:
            if any(p.glob("*/manifest.json")):
                raise ValueError(f"{p}: holds split folders; give one of them "
                                 f"({', '.join(sorted(m.parent.name for m in p.glob('*/manifest.json')))})")
            raise ValueError(f"{p}: empty input (no manifest.json, no images)")
        shape = _check_images(files)
        rel = [str(f.relative_to(p)) for f in files]
        pieces = [Piece("\n".join(rel[a:a + piece_size]), len(rel[a:a + piece_size]))
                  for a in range(0, len(rel), piece_size)]
        return Input(p, "folder", pieces, shape, True)
    raise ValueError(f"{p}: not a shard folder, .npy or image folder")


def _open_remote(loc: Location) -> Input:
    if loc.name == MANIFEST:
        loc = loc.parent
    if loc.suffix:
        raise ValueError(f"{loc}: only shard split folders can be read from a URL; "
                         "copy a .npy or an image folder to a local disk, or convert it to shards")
    try:
        src = ShardSource(loc)
    except ShardError as e:
        raise ValueError(str(e)) from None
    return Input(loc, "shards", src.pieces, tuple(src.shape), is_eight_bit(src), src)


def _check_images(files: list[Path]) -> tuple[int, int, int]:
    """The folder's image shape (C, H, W), from the first image; every image's header is read
    here, before Ray starts, so that an unreadable file or a size mismatch is one line naming
    the file instead of an actor's traceback. (Headers only: corrupt pixel data further in a
    file still surfaces from the actor that decodes it.)"""
    from PIL import Image

    shape = None
    for f in files:
        try:
            with Image.open(f) as im:
                if shape is None:
                    shape = (1 if im.mode in ("L", "1", "I;16", "I") else 3, im.height, im.width)
                elif (im.height, im.width) != shape[1:]:
                    raise ValueError(f"{f}: {im.width}x{im.height} pixels, "
                                     f"but the folder's first image ({files[0].name}) is "
                                     f"{shape[2]}x{shape[1]}; resize with `dsm data convert folder`")
        except OSError as e:
            raise ValueError(f"{f}: unreadable image ({e})") from None
    return shape


def _read_images(root: Path, piece: Piece, shape: tuple[int, ...]) -> tuple[list[str], np.ndarray, np.ndarray]:
    from PIL import Image

    keys = piece.name.split("\n")
    k_values = np.empty((len(keys), *shape), np.uint8)
    for i, k in enumerate(keys):
        try:
            with Image.open(root / k) as im:
                im = im.convert("L" if shape[0] == 1 else "RGB")
                if (im.height, im.width) != shape[1:]:
                    raise ValueError(f"{root / k}: {im.width}x{im.height} pixels, but the folder's first image "
                                     f"(and the model) is {shape[2]}x{shape[1]}; resize with `dsm data convert folder`")
                a = np.asarray(im, dtype=np.uint8)
        except OSError as e:
            raise ValueError(f"{root / k}: unreadable image ({e})") from None
        k_values[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return keys, to_unit_float(torch.from_numpy(k_values)).numpy(), np.full(len(keys), -1, np.int64)


def iter_examples(inp: Input, limit: int | None = None) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """Pieces in order, stopping once ``limit`` examples were yielded (the last piece truncated)."""
    seen = 0
    for i in range(len(inp.pieces)):
        keys, x, labels = inp.read(i)
        if limit is not None and seen + len(keys) > limit:
            cut = limit - seen
            keys, x, labels = keys[:cut], x[:cut], labels[:cut]
        seen += len(keys)
        yield keys, x, labels
        if limit is not None and seen >= limit:
            return
