"""Check shards against their manifest and report every problem with its file name.

For one split folder: the manifest parses; every listed shard exists with the recorded size
and sha256; each shard reads to the end as a tar with the recorded number of samples; each
sample has a PNG that decodes to the manifest's (C, H, W), an integer label and valid JSON;
keys are unique across the split; no unlisted ``.tar`` or leftover temporary file lies
beside them. ``decode=False`` stops after sizes and hashes (fast: no PNG decoding).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from dsm.data.shards import MANIFEST, Manifest, ShardError, iter_shard
from dsm.plumbing.store import Location, StoreError


@dataclass(frozen=True)
class Problem:
    """One thing wrong, and the file it is in."""

    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


def split_folders(path: str | Path | Location) -> list[Location]:
    """``path`` if it holds a manifest, else its sub-folders that do (sorted); [] if none.
    A local folder or a URL (an HTTP folder must be the split itself: it cannot be listed)."""
    loc = Location.of(path)
    if (loc / MANIFEST).is_file():
        return [loc]
    if loc.is_local:
        return [Location.of(p.parent) for p in sorted(loc.path.glob(f"*/{MANIFEST}"))]
    if not loc.listable:
        return []
    return [sub for sub in loc.subfolders() if MANIFEST in sub.listing()]


def _stray_files(folder: Location, listed: set[str]) -> list[Problem]:
    """Unlisted shards and temporary files left by an unfinished write (ShardWriter's, atomic_path's)."""
    if folder.is_local:
        names = [p.name for p in folder.path.iterdir() if p.is_file()]
    elif folder.listable:
        names = list(folder.listing())
    else:
        return []
    problems = [Problem(str(folder / n), f"not listed in {MANIFEST}")
                for n in sorted(names) if n.endswith(".tar") and n not in listed]
    return problems + [Problem(str(folder / n), "left over from an unfinished write") for n in sorted(names)
                       if n.startswith(".") and (".tmp-" in n or n.endswith(".tmp"))]


def _read(path: Location) -> bytes | Problem:
    try:
        return path.path.read_bytes() if path.is_local else path.read_bytes()
    except FileNotFoundError:
        return Problem(str(path), f"listed in {MANIFEST} but missing")
    except StoreError as e:
        return Problem(str(path), f"listed in {MANIFEST} but missing" if e.message.startswith("no such")
                       else e.message)


def _check_shard(path: Location, info, m: Manifest, keys: dict[str, str], decode: bool) -> list[Problem]:
    """One listed shard against the manifest: present, its size and sha256, and (``decode``) every
    sample: decodable, with its .json, a label among the classes, a key not seen before in
    ``keys`` (key -> shard file, updated here)."""
    content = _read(path)
    if isinstance(content, Problem):
        return [content]
    problems = []
    if len(content) != info.bytes:
        problems.append(Problem(str(path), f"{len(content)} bytes, the manifest says {info.bytes}"))
    digest = hashlib.sha256(content).hexdigest()
    if digest != info.sha256:
        problems.append(Problem(str(path), f"sha256 {digest[:16]}... does not match the manifest's "
                                           f"{info.sha256[:16]}..."))
    if not decode:
        return problems

    def bad_sample(e: ShardError) -> None:
        problems.append(Problem(e.path, str(e).removeprefix(f"{e.path}: ")))

    try:
        for s in iter_shard(str(path), expected_samples=info.samples, shape=m.shape, with_meta=True,
                            on_sample_error=bad_sample, content=content):
            if s.key in keys:
                problems.append(Problem(str(path), f"key {s.key!r} also occurs in {keys[s.key]}"))
            keys[s.key] = info.file
            if s.meta is None:
                problems.append(Problem(str(path), f"sample {s.key!r} has no .json"))
            if m.classes is not None and not -1 <= s.label < len(m.classes):
                problems.append(Problem(str(path), f"sample {s.key!r}: label {s.label} is outside the "
                                                   f"{len(m.classes)} classes"))
    except ShardError as e:
        bad_sample(e)
    return problems


def verify_split(folder: str | Path | Location, *, decode: bool = True, progress: bool = False) -> list[Problem]:
    """Every problem found in one split folder (empty list: all good)."""
    from tqdm import tqdm

    folder = Location.of(folder)
    try:
        m = Manifest.load(folder)
    except ShardError as e:
        return [Problem(e.path, str(e).removeprefix(f"{e.path}: "))]
    problems: list[Problem] = []
    listed = {s.file for s in m.shards}
    if len(listed) != len(m.shards):
        problems.append(Problem(str(folder / MANIFEST), "a shard is listed more than once"))
    problems += _stray_files(folder, listed)
    keys: dict[str, str] = {}
    for info in tqdm(m.shards, desc=f"verify {folder}", unit="shard", disable=not progress, leave=False):
        problems += _check_shard(folder / info.file, info, m, keys, decode)
    return problems


def verify(path: str | Path, *, decode: bool = True, progress: bool = False) -> list[Problem]:
    """Verify a split folder, or every split folder under ``path``."""
    folders = split_folders(path)
    if not folders:
        return [Problem(str(Location.of(path)), f"no {MANIFEST} here or in its sub-folders (not a shard folder, "
                                   "or an unfinished write)")]
    return [p for f in folders for p in verify_split(f, decode=decode, progress=progress)]
