"""Converters from data you bring: the official downsampled ImageNet, and folders of images.

``imagenet64``
    A folder with ``train_data_batch_1`` .. ``train_data_batch_10`` and ``val_data``, each a
    pickled dict with ``data``: uint8 (N, 3 * s * s) in planar CHW order and ``labels``:
    1..1000 (the ``.npz`` variant holds the same arrays). s = 64 for ImageNet64; other sides
    (ImageNet32, 16) are recognised from the row length. Written as splits ``train`` and
    ``val``, in the files' order (the official batches are already in random class order),
    with labels stored 0-based (label - 1).
``folder``
    An ImageNet-style tree ``SRC/<class>/<image>.{jpg,jpeg,png}``: classes are the sorted
    sub-folder names (images directly in SRC get label -1). Each image is cropped to its
    central square (or squashed, ``crop="none"``) and box-downsampled to ``size``. The file
    order is shuffled by ``seed`` so that each shard mixes the classes.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dsm.data.images import box_downsample, to_gray
from dsm.data.shards import Manifest, write_split
from dsm.plumbing.config import ConfigError
from dsm.plumbing.store import Location

IMAGENET_SPLITS = {"train": re.compile(r"^train_data_batch_(\d+)(\.npz)?$"), "val": re.compile(r"^val_data(\.npz)?$")}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def imagenet_files(src: str | Path) -> dict[str, list[Path]]:
    """{"train": [batch files in numeric order], "val": [val_data]} found in ``src``."""
    src = Path(src)
    if not src.is_dir():
        raise ConfigError(f"{src}: not a folder (expected the official downsampled ImageNet batch files)")
    found: dict[str, list[tuple[int, Path]]] = {"train": [], "val": []}
    for p in src.iterdir():
        for split, rx in IMAGENET_SPLITS.items():
            m = rx.match(p.name)
            if m and p.is_file():
                found[split].append((int(m.group(1)) if split == "train" else 0, p))
    out = {k: [p for _, p in sorted(v)] for k, v in found.items()}
    for files in out.values():  # a batch given both as pickle and .npz: keep one
        stems = [f.name.removesuffix(".npz") for f in files]
        dup = sorted({s for s in stems if stems.count(s) > 1})
        if dup:
            raise ConfigError(f"{src}: {dup[0]} is present both pickled and as .npz; keep one")
    return out


def read_imagenet_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
    """One batch file -> (images (N, s, s, 3) uint8 HWC, labels (N,) int64 in 0..999, side s).

    Errors name the file and the field: a missing ``data``/``labels``, a dtype other than
    uint8, a row length that is not 3 * s * s, a count mismatch, labels outside 1..1000.
    """
    path = Path(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                d: dict[str, Any] = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"{path}: not a readable .npz ({e})") from None
    else:
        from dsm.data.pickles import load_pickle

        with open(path, "rb") as f:
            d = load_pickle(f, str(path))
        if isinstance(d, dict):
            d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a dict with 'data' and 'labels', got {type(d).__name__}")
    for k in ("data", "labels"):
        if k not in d:
            raise ValueError(f"{path}: no {k!r} field (has {sorted(d)})")
    data, labels = np.asarray(d["data"]), np.asarray(d["labels"])
    if data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{path}: 'data' must be uint8 of shape (N, 3*s*s), got {data.dtype} {data.shape}")
    side = int(round((data.shape[1] / 3) ** 0.5))
    if 3 * side * side != data.shape[1]:
        raise ValueError(f"{path}: 'data' rows have {data.shape[1]} values, not 3*s*s for any side s")
    if labels.ndim != 1 or len(labels) != len(data):
        raise ValueError(f"{path}: 'labels' has shape {labels.shape} for {len(data)} images")
    if len(labels) and (labels.min() < 1 or labels.max() > 1000):
        raise ValueError(f"{path}: 'labels' must be 1..1000, found {labels.min()}..{labels.max()}")
    images = data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)  # planar CHW -> HWC
    return images, labels.astype(np.int64) - 1, side


def _shape(side: int, size: int | None, gray: bool) -> tuple[int, int, int]:
    s = size or side
    return (1 if gray else 3, s, s)


def convert_imagenet64(src: str | Path, out: str | Path, *, size: int | None = None, gray: bool = False,
                       splits: tuple[str, ...] | None = None, shard_size: int | None = None,
                       overwrite: bool = False, progress: bool = True, chunk: int = 4096) -> dict[str, Manifest]:
    """Convert the official downsampled ImageNet in ``src`` to ``out/train`` and ``out/val``.

    splits: None converts the splits whose files are present; named splits must be present.

    size: output side by box down-sampling (must divide the source side); gray: BT.601 luma.
    Files are read one at a time, and transformed ``chunk`` rows at a time.
    """
    files = imagenet_files(src)
    for s in splits or ():
        if s not in IMAGENET_SPLITS:
            raise ConfigError(f"unknown ImageNet split {s!r}; valid: train, val")
        if not files[s]:
            raise ConfigError(f"{src}: split {s!r} asked for, but no "
                              f"{'train_data_batch_N' if s == 'train' else 'val_data'} file (pickled or .npz) found")
    wanted = [s for s in (splits or IMAGENET_SPLITS) if files[s]]
    if not wanted:
        raise ConfigError(f"{src}: none of train_data_batch_1..10 or val_data (pickled, or .npz) found")
    # The first file tells the side (64 for ImageNet64); keep it to avoid reading it twice.
    cache = {files[wanted[0]][0]: read_imagenet_batch(files[wanted[0]][0])}
    side = cache[files[wanted[0]][0]][2]
    if size is not None and (size > side or side % size):
        raise ConfigError(f"size={size}: the source side {side} is not a multiple of it")
    shape = _shape(side, size, gray)
    manifests = {}
    for split in wanted:
        def samples(split: str = split) -> Iterator[tuple[np.ndarray, int, dict]]:
            for path in files[split]:
                images, labels, s = cache.pop(path) if path in cache else read_imagenet_batch(path)
                if s != side:
                    raise ValueError(f"{path}: images are {s}x{s}, earlier files were {side}x{side}")
                for a in range(0, len(images), chunk):
                    block = images[a:a + chunk]
                    block = to_gray(block) if gray else block
                    block = box_downsample(block, size) if size else block
                    for i in range(len(block)):
                        yield block[i], int(labels[a + i]), {"source_id": f"{path.name}:{a + i}"}

        manifests[split] = write_split(
            Location.of(out) / split, split, samples(), shape=shape, source=f"imagenet64:{Path(src).resolve()}",
            shard_size=shard_size, options={"size": shape[1], "gray": gray, "source_side": side,
                                            "labels": "official label - 1 (0..999)",
                                            "files": [p.name for p in files[split]]},
            overwrite=overwrite, progress=progress)
    return manifests


def image_files(src: str | Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """([(file, label)] sorted by path, class names) for an ImageNet-style folder."""
    src = Path(src)
    if not src.is_dir():
        raise ConfigError(f"{src}: not a folder")
    classes = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    index = {c: i for i, c in enumerate(classes)}
    files = []
    for p in sorted(src.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not any(
                part.startswith(".") for part in p.relative_to(src).parts):
            rel = p.relative_to(src)
            files.append((p, index[rel.parts[0]] if len(rel.parts) > 1 else -1))
    if not files:
        raise ConfigError(f"{src}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))} files "
                          "in it and its sub-folders)")
    used = sorted({lab for _, lab in files if lab >= 0})
    classes_with_images = [classes[i] for i in used]
    remap = {old: new for new, old in enumerate(used)}
    return [(p, remap.get(lab, -1)) for p, lab in files], classes_with_images


def _load_image(job: tuple[str, int, bool, str]) -> np.ndarray | str:
    """Worker: one file -> (size, size, C) uint8, or an error message naming the file."""
    from PIL import Image

    from dsm.data.images import resize_box

    path, size, gray, crop = job
    try:
        with Image.open(path) as im:
            im = im.convert("L" if gray else "RGB")
            return resize_box(im, size, crop)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        return f"{path}: cannot read image ({type(e).__name__}: {e})"


def convert_folder(src: str | Path, out: str | Path, *, size: int, split: str = "train", gray: bool = False,
                   crop: str = "center", seed: int = 0, shard_size: int | None = None, workers: int | None = None,
                   skip_bad: bool = False, overwrite: bool = False, progress: bool = True) -> Manifest:
    """Convert an image folder to ``out/<split>``: box-downsampled ``size`` x ``size``, labels from
    sub-folder names (``classes`` in the manifest). An unreadable file is an error naming it,
    or with ``skip_bad`` a warning, counted in the manifest's options."""
    if size < 1:
        raise ConfigError(f"size must be >= 1, got {size}")
    if crop not in ("center", "none"):
        raise ConfigError(f"crop must be 'center' or 'none', got {crop!r}")
    files, classes = image_files(src)
    order = np.random.default_rng(seed).permutation(len(files))
    files = [files[i] for i in order]
    workers = workers or min(8, os.cpu_count() or 1)
    jobs = [(str(p), size, gray, crop) for p, _ in files]
    skipped: list[str] = []
    src = Path(src)

    def samples() -> Iterator[tuple[np.ndarray, int, dict]]:
        if workers > 1:
            import multiprocessing as mp

            pool = mp.get_context("spawn" if os.name != "posix" else "fork").Pool(workers)
            results = pool.imap(_load_image, jobs, chunksize=32)
        else:
            pool, results = None, map(_load_image, jobs)
        try:
            for (p, label), img in zip(files, results):
                if isinstance(img, str):
                    if not skip_bad:
                        raise ValueError(img)
                    warnings.warn(f"skipping {img}", stacklevel=2)
                    skipped.append(str(p))
                    continue
                yield img, label, {"source_id": str(p.relative_to(src))}
        finally:
            if pool is not None:
                pool.terminate()

    options: dict[str, Any] = {"size": size, "gray": gray, "crop": crop, "seed": seed, "skipped": skipped}
    return write_split(Location.of(out) / split, split, samples(), shape=(1 if gray else 3, size, size),
                       source=f"folder:{src.resolve()}", total=len(files), shard_size=shard_size,
                       classes=classes, options=options, overwrite=overwrite, progress=progress)
