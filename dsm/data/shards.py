"""WebDataset shards of uint8 PNG images with a manifest; written atomically, read with checks.

One split lives in one folder::

    OUT/train/manifest.json
    OUT/train/train-000000.tar     # members: <key>.png, <key>.cls, <key>.json per sample
    OUT/train/train-000001.tar

A sample is three tar members sharing one key (``train-00000042``): the image as lossless
PNG (8-bit gray or RGB), the class as ASCII digits (``-1`` when unlabeled), and a JSON
object with at least ``source_id`` (where the sample came from, e.g. ``val_data:17``).

Nothing partial ever looks complete: each shard is written under a hidden temporary name
and renamed when closed, and ``manifest.json`` (sample counts, the CHW shape, a sha256 per
shard, the source and the split) is written last, also by rename. A folder without a
manifest is an unfinished write.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsm.data.images import as_hwc, decode_png, encode_png
from dsm.plumbing.fileio import sha256_file
from dsm.plumbing.store import Location, StoreError, is_remote

MANIFEST = "manifest.json"
FORMAT = "dsm-webdataset"
VERSION = 1
DEFAULT_SHARD_SIZE = 2000
MIN_SHARDS = 16  # the automatic shard size aims for at least this many shards (many ranks x workers)


class ShardError(ValueError):
    """A shard or its manifest is bad; ``path`` names the file and the message says what is wrong."""

    def __init__(self, path: str | Path, message: str):
        self.path, self.message = str(path), message
        super().__init__(f"{path}: {message}")

    def __reduce__(self):
        # Ray carries a worker's exception to the driver by pickling it; the default reduction
        # would call ShardError(full_text) and fail, losing the worker's real error.
        return type(self), (self.path, self.message)


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest records it: file name (relative to the manifest), sample count,
    sha256 of the tar file (hex), and its size in bytes."""

    file: str
    samples: int
    sha256: str
    bytes: int

    @classmethod
    def parse(cls, entry, where: str, path: str | Location) -> ShardInfo:
        """One entry of the manifest's ``shards`` list; ``where`` (``shards[i]``) and ``path`` name it
        in errors."""
        try:
            info = cls(file=str(entry["file"]), samples=int(entry["samples"]), sha256=str(entry["sha256"]),
                       bytes=int(entry["bytes"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ShardError(path, f"{where} needs file, samples, sha256 and bytes ({e!r})") from None
        if "/" in info.file or info.file.startswith("."):
            raise ShardError(path, f"{where}.file {info.file!r} must be a plain file name")
        if info.samples < 0:
            raise ShardError(path, f"{where}.samples is negative")
        return info


@dataclass
class Manifest:
    """What a split folder holds. ``shape`` is the image shape (C, H, W) of every sample."""

    source: str
    split: str
    shape: tuple[int, int, int]
    shards: list[ShardInfo]
    classes: list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    version: int = VERSION
    dtype: str = "uint8"
    created: str = ""

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def to_json(self) -> str:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["layout"] = "CHW"
        d["num_samples"] = self.num_samples
        order = ["format", "version", "source", "split", "num_samples", "shape", "layout", "dtype",
                 "classes", "options", "created", "shards"]
        # One line per field and per shard: readable, and diffs stay small.
        lines = [f" {json.dumps(k)}: {json.dumps(d[k])}" for k in order if k != "shards"]
        shards = ",\n".join(f"  {json.dumps(s)}" for s in d["shards"])
        return "{\n" + ",\n".join(lines) + f',\n "shards": [\n{shards}\n ]\n}}\n'


    @classmethod
    def load(cls, path: str | Path | Location) -> Manifest:
        """Read ``path`` (a manifest.json, or the folder holding one; a local path or a URL);
        errors name the file and field."""
        loc = Location.of(path)
        if loc.is_local and loc.path.is_dir() or loc.name != MANIFEST and not loc.is_local:
            loc = loc / MANIFEST
        if loc.is_local and not loc.path.is_file():
            hint = " (an unfinished write leaves no manifest)" if loc.path.parent.is_dir() else ""
            raise ShardError(loc, f"no manifest{hint}")
        try:
            text = loc.read_bytes()
        except StoreError as e:
            missing = e.message.startswith("no such")
            raise ShardError(loc, "no manifest (an unfinished write leaves no manifest)" if missing
                             else e.message) from None
        return cls.parse(text, loc)

    @classmethod
    def parse(cls, text: bytes | str, path: str | Location) -> Manifest:
        """A manifest from its JSON text; ``path`` names it in errors."""
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ShardError(path, f"not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ShardError(path, "the manifest must be a JSON object")
        if d.get("format") != FORMAT:
            raise ShardError(path, f"field 'format' is {d.get('format')!r}, expected {FORMAT!r}")
        if d.get("version") != VERSION:
            raise ShardError(path, f"field 'version' is {d.get('version')!r}; this dsm reads version {VERSION}")
        for k in ("source", "split", "shape", "shards"):
            if k not in d:
                raise ShardError(path, f"missing field {k!r}")
        shape = d["shape"]
        if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)
                and shape[0] in (1, 3)):
            raise ShardError(path, f"field 'shape' must be [C, H, W] with C in (1, 3), got {shape!r}")
        shards = [ShardInfo.parse(s, f"shards[{i}]", path) for i, s in enumerate(d["shards"])]
        if "num_samples" in d and d["num_samples"] != sum(s.samples for s in shards):
            raise ShardError(path, f"field 'num_samples' = {d['num_samples']} but the shards add up to "
                                   f"{sum(s.samples for s in shards)}")
        return cls(source=str(d["source"]), split=str(d["split"]), shape=tuple(shape), shards=shards,
                   classes=d.get("classes"), options=d.get("options") or {}, dtype=d.get("dtype", "uint8"),
                   created=d.get("created", ""))


def auto_shard_size(num_samples: int) -> int:
    """Samples per shard when none is given: at most 2000 (about 20 MB of 64x64 colour PNG),
    and small enough that a small data set still makes at least 16 shards."""
    return max(1, min(DEFAULT_SHARD_SIZE, -(-num_samples // MIN_SHARDS)))


class ShardWriter:
    """Writes one split: samples go into ``<split>-NNNNNN.tar`` shards of ``shard_size`` samples.

    Use as a context manager; :meth:`close` renames the last shard and writes the manifest.
    On an exception the temporary shard is deleted and no manifest is written, so the folder
    never looks complete. An existing split is replaced only with ``overwrite=True`` (its
    manifest is removed first, then its shards).

    shape: (C, H, W) of every image; ``write`` checks each image against it.
    """

    def __init__(self, out_dir: str | Path, split: str, *, shape: tuple[int, int, int], source: str,
                 shard_size: int = DEFAULT_SHARD_SIZE, classes: list[str] | None = None,
                 options: dict[str, Any] | None = None, overwrite: bool = False, compress_level: int = 6):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if not split or "/" in split or "." in split or split.startswith("-"):
            raise ValueError(f"split name {split!r} must be a plain word (it prefixes file names and keys)")
        self.target = Location.of(out_dir)
        # A remote split is staged shard by shard in a local temporary folder, each shard
        # uploaded as it is closed (one upload: atomic), the manifest last.
        self.dir = self.target.path if self.target.is_local else Path(tempfile.mkdtemp(prefix="dsm-shards-"))
        self.split = split
        self.shape = tuple(int(v) for v in shape)
        if len(self.shape) != 3 or self.shape[0] not in (1, 3):
            raise ValueError(f"shape must be (C, H, W) with C in (1, 3), got {shape}")
        self.source, self.shard_size, self.classes = source, shard_size, classes
        self.options = dict(options or {}, shard_size=shard_size)
        self.compress_level = compress_level
        self._prepare_dir(overwrite)
        self.shards: list[ShardInfo] = []
        self._count = 0  # samples written in total
        self._in_shard = 0
        self._tar = None
        self._tmp: Path | None = None
        self._closed = False

    def _prepare_dir(self, overwrite: bool) -> None:
        if not self.target.is_local:
            return self._prepare_remote(overwrite)
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = self.dir / MANIFEST
        old = sorted(self.dir.glob(f"{self.split}-*.tar"))
        if (manifest.exists() or old) and not overwrite:
            what = MANIFEST if manifest.exists() else old[0].name
            raise FileExistsError(f"{self.dir} already holds split {self.split!r} ({what}); "
                                  "pass overwrite=True (--force) to replace it")
        if manifest.exists():
            manifest.unlink()  # first: from here on the folder no longer claims to be complete
        for p in old:
            p.unlink()
        for p in self.dir.glob(f".{self.split}-*.tar.tmp-*"):
            p.unlink()

    def _prepare_remote(self, overwrite: bool) -> None:
        """The remote twin of :meth:`_prepare_dir`: refuse, or delete the manifest then the shards."""
        import fnmatch

        self.target.require_writable()
        found = self.target.listing()
        old = sorted(n for n in found if fnmatch.fnmatch(n, f"{self.split}-*.tar"))
        if (MANIFEST in found or old) and not overwrite:
            what = MANIFEST if MANIFEST in found else old[0]
            raise FileExistsError(f"{self.target} already holds split {self.split!r} ({what}); "
                                  "pass overwrite=True (--force) to replace it")
        for name in ([MANIFEST] if MANIFEST in found else []) + old:
            (self.target / name).remove()

    def _name(self, index: int) -> str:
        return f"{self.split}-{index:06d}.tar"

    def _open(self) -> None:
        from webdataset import TarWriter

        name = self._name(len(self.shards))
        self._tmp = self.dir / f".{name}.tmp-{os.getpid()}"
        # mtime fixed: the same samples give byte-identical shards, hence the same sha256.
        self._tar = TarWriter(str(self._tmp), encoder=False, compress=False, mtime=0, mode=0o644)
        self._in_shard = 0

    def _finish(self) -> None:
        assert self._tar is not None and self._tmp is not None
        self._tar.close()
        self._tar = None
        final = self.dir / self._name(len(self.shards))
        info = ShardInfo(final.name, self._in_shard, sha256_file(self._tmp), self._tmp.stat().st_size)
        os.replace(self._tmp, final)
        self._tmp = None
        if not self.target.is_local:
            (self.target / final.name).upload(final)
            final.unlink()
        self.shards.append(info)

    def write(self, image: np.ndarray, label: int = -1, meta: dict[str, Any] | None = None) -> str:
        """Append one sample and return its key. image: (H, W, C) or (H, W) uint8.

        meta: JSON-serialisable; should hold ``source_id``. ``label`` is -1 when unlabeled.
        """
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        image = as_hwc(image)
        chw = (image.shape[2], image.shape[0], image.shape[1])
        if chw != self.shape:
            raise ValueError(f"image {self._count} has shape (C, H, W) = {chw}, the split declares {self.shape}")
        if self._tar is None:
            self._open()
        key = f"{self.split}-{self._count:08d}"
        self._tar.write({"__key__": key, "png": encode_png(image, self.compress_level),
                         "cls": str(int(label)).encode(), "json": json.dumps(meta or {}, sort_keys=True).encode()})
        self._count += 1
        self._in_shard += 1
        if self._in_shard == self.shard_size:
            self._finish()
        return key

    def close(self) -> Manifest:
        """Finish the last shard, write manifest.json (by rename) and return it."""
        if self._closed:
            raise RuntimeError("ShardWriter is already closed")
        if self._tar is not None:
            self._finish()
        if not self.shards:
            self.abort()
            raise ValueError(f"no samples were written to {self.dir} (split {self.split!r})")
        self._closed = True
        m = Manifest(source=self.source, split=self.split, shape=self.shape, shards=self.shards,
                     classes=self.classes, options=self.options,
                     created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
        (self.target / MANIFEST).write_text(m.to_json())
        self._drop_staging()
        return m

    def _drop_staging(self) -> None:
        if not self.target.is_local:
            shutil.rmtree(self.dir, ignore_errors=True)

    def abort(self) -> None:
        """Drop the shard being written; write no manifest."""
        self._closed = True
        if self._tar is not None:
            try:
                self._tar.close()
            except Exception:  # noqa: BLE001 - the file is deleted next anyway
                pass
            self._tar = None
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()
        self._tmp = None
        self._drop_staging()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()


@dataclass(frozen=True)
class Sample:
    """One decoded sample: image (H, W, C) uint8, label (-1 unlabeled), its key and shard path.
    ``meta`` is the parsed JSON when read with ``with_meta=True``, else None."""

    key: str
    image: np.ndarray
    label: int
    url: str
    meta: dict | None = None


def iter_shard(path: str | Path, *, expected_samples: int | None = None,
               shape: tuple[int, int, int] | None = None, with_meta: bool = False,
               on_sample_error: Callable[[ShardError], None] | None = None,
               content: bytes | None = None) -> Iterator[Sample]:
    """Read one shard (a path or URL) in order, checking every sample.

    Raises :class:`ShardError` naming ``path`` for a corrupt or truncated tar, a sample
    without ``.png`` or ``.cls``, an undecodable image, an image whose (C, H, W) differs from
    ``shape``, a repeated key, or a sample count that differs from ``expected_samples``
    (a tar cut at a member boundary reads as a shorter, valid tar: the count catches it).

    on_sample_error: when given, a bad *sample* is passed to it and skipped instead of
    raising; tar-level damage and count mismatches always raise. content: the shard's bytes,
    when the caller has them already (``path`` then only names it).
    """
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    f, path = _open_shard(path) if content is None else (io.BytesIO(content), str(path))
    seen: set[str] = set()
    n = 0
    with f:
        _check_tar_end(f, path)
        grouped = group_by_keys(dict(m, __url__=path) for m in tar_file_iterator(f))
        while True:
            try:
                raw = next(grouped)
            except StopIteration:
                break
            except (tarfile.TarError, EOFError, OSError, ValueError) as e:
                msg = str(e.args[0]) if e.args else type(e).__name__
                raise ShardError(path, f"corrupt or truncated tar after {n} samples ({msg})") from None
            n += 1
            try:
                yield _decode_sample(raw, path, shape, seen, with_meta)
            except ShardError as e:
                if on_sample_error is None:
                    raise
                on_sample_error(e)
    if expected_samples is not None and n != expected_samples:
        raise ShardError(path, f"{n} samples read but the manifest says {expected_samples} (truncated shard?)")


def _open_shard(path: str | Path | Location) -> tuple[Any, str]:
    """(a seekable binary file, the name errors use). A remote shard is fetched whole into
    memory (one shard per loader worker; nothing is written to disk): a failed fetch is retried
    from the start without ever handing half a shard's samples to the stream."""
    if not is_remote(path):
        name = str(Location.of(path).path) if isinstance(path, Location) else str(path)
        try:
            return open(name, "rb"), name
        except OSError as e:
            raise ShardError(name, f"cannot open shard ({e.strerror or e})") from None
    loc = Location.of(path)
    try:
        return io.BytesIO(loc.read_bytes()), str(loc)
    except StoreError as e:
        raise ShardError(e.url, f"cannot read shard ({e.message})") from None


def _check_tar_end(f: Any, path: str) -> None:
    """A complete tar is whole 512-byte blocks ending in two zero blocks (the end-of-archive
    marker). Python's tarfile silently stops at a cut-off header, so a shard cut short could
    otherwise read as a shorter, valid one; this O(1) check names the damage first."""
    size = f.seek(0, os.SEEK_END)
    if size < 1024 or size % 512:
        raise ShardError(path, f"corrupt or truncated tar ({size} bytes is not a whole number of 512-byte blocks)")
    f.seek(size - 1024)
    if f.read(1024).strip(b"\0"):
        raise ShardError(path, "corrupt or truncated tar (no end-of-archive marker)")
    f.seek(0)


def _decode_sample(raw: dict, path: str, shape: tuple | None, seen: set[str], with_meta: bool) -> Sample:
    key = raw["__key__"]
    if key in seen:
        raise ShardError(path, f"key {key!r} occurs twice (samples must be grouped and keys unique)")
    seen.add(key)
    members = sorted(k for k in raw if not k.startswith("__"))
    for ext, what in (("png", "image"), ("cls", "label")):
        if ext not in raw:
            raise ShardError(path, f"sample {key!r} has no {what} (.{ext}); it has {members}")
    try:
        image = decode_png(raw["png"])
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad data
        raise ShardError(path, f"sample {key!r}: cannot decode its PNG ({e})") from None
    if shape is not None:
        chw = (image.shape[2], image.shape[0], image.shape[1])
        if chw != tuple(shape):
            raise ShardError(path, f"sample {key!r}: image shape (C, H, W) = {chw}, the manifest says {tuple(shape)}")
    try:
        label = int(raw["cls"])
    except ValueError:
        raise ShardError(path, f"sample {key!r}: label {raw['cls'][:20]!r} is not an integer") from None
    meta = None
    if with_meta and "json" in raw:
        try:
            meta = json.loads(raw["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ShardError(path, f"sample {key!r}: .json is not valid JSON ({e})") from None
    return Sample(key, image, label, path, meta)


def write_split(out_dir: str | Path, split: str, samples: Iterator[tuple[np.ndarray, int, dict]], *,
                shape: tuple[int, int, int], source: str, total: int | None = None,
                shard_size: int | None = None, classes: list[str] | None = None,
                options: dict[str, Any] | None = None, overwrite: bool = False,
                progress: bool = True) -> Manifest:
    """Write ``(image HWC uint8, label, meta)`` samples as one split; returns the manifest.

    shard_size: None picks :func:`auto_shard_size` of ``total`` (or 2000 when unknown).
    A tqdm bar counts samples when ``progress``.
    """
    from tqdm import tqdm

    if shard_size is None:
        shard_size = auto_shard_size(total) if total else DEFAULT_SHARD_SIZE
    with ShardWriter(out_dir, split, shape=shape, source=source, shard_size=shard_size, classes=classes,
                     options=options, overwrite=overwrite) as w:
        for image, label, meta in tqdm(samples, total=total, desc=f"{split} -> {out_dir}", unit="img",
                                       disable=not progress, leave=False):
            w.write(image, label, meta)
        return w.close()


@dataclass(frozen=True)
class Piece:
    """A unit of work for the streams: one shard (or a row range of a .npy), ``count`` samples."""

    name: str
    count: int


class ShardSource:
    """A split folder (``manifest.json`` plus shards) as the streams see it: a local folder or a
    URL (dsm.plumbing.store). Samples come out as (key, image (C, H, W) uint8, label).

    The manifest is read once; each listed shard must exist (the error names the missing
    file). A remote folder is checked with one listing (an HTTP one, which cannot be listed,
    with one HEAD request per shard). Piece names are the shards' paths or URLs.
    """

    def __init__(self, folder: str | Path | Location):
        loc = Location.of(folder)
        self.location = loc
        self.folder: Path | str = loc.path if loc.is_local else str(loc)
        self.manifest = Manifest.load(loc)
        self.shape: tuple[int, ...] = tuple(self.manifest.shape)
        self.is_image = True
        sizes = self._sizes()
        missing = [s.file for s in self.manifest.shards if s.file not in sizes]
        if missing:
            raise ShardError(self._shard(missing[0]), f"listed in {MANIFEST} but missing"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        self.pieces = [Piece(self._shard(s.file), s.samples) for s in self.manifest.shards if s.samples]
        if not self.pieces:
            raise ShardError(self._shard(MANIFEST), "lists no samples")

    def _shard(self, file: str) -> str:
        return str(self.location / file)

    def _sizes(self) -> dict[str, int]:
        """{shard file: size in bytes} of the listed shards that exist."""
        if self.location.is_local:
            found = {s.file: self.location.path / s.file for s in self.manifest.shards}
            return {f: p.stat().st_size for f, p in found.items() if p.is_file()}
        if self.location.listable:
            return self.location.listing()
        sizes = {}
        for s in self.manifest.shards:
            try:
                sizes[s.file] = (self.location / s.file).size()
            except StoreError as e:
                if not e.message.startswith("no such"):
                    raise ShardError(e.url, e.message) from None
        return sizes

    def check_sizes(self) -> None:
        """ShardError naming the first shard whose size differs from the manifest's (a truncated
        copy, say): a stat (or one listing) per split, cheap enough to run before every job. A
        shard corrupted in place at its full size is found only when read, or by
        ``dsm data verify --sha256``."""
        sizes = self._sizes()
        for s in self.manifest.shards:
            size = sizes.get(s.file)
            if size != s.bytes:
                raise ShardError(self._shard(s.file), f"{size} bytes, but {MANIFEST} says {s.bytes} "
                                 "(truncated or replaced; `dsm data verify` lists every problem)")

    def __repr__(self) -> str:
        return f"ShardSource({str(self.folder)!r}, {len(self.pieces)} shards, {self.manifest.num_samples} samples)"

    def read(self, piece: Piece, on_sample_error: Callable[[ShardError], None] | None = None
             ) -> Iterator[tuple[str, np.ndarray, int]]:
        for s in iter_shard(piece.name, expected_samples=piece.count, shape=self.manifest.shape,
                            on_sample_error=on_sample_error):
            yield s.key, s.image.transpose(2, 0, 1), s.label
