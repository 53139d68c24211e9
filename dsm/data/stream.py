"""The training and evaluation streams: WebDataset pipelines that each worker builds for itself.

No Ray inside: a Ray Train worker (or any DDP process) makes its own :class:`TrainStream`.
Rank and world size are arguments, else ``RANK``/``WORLD_SIZE`` from the environment, else
``torch.distributed`` when initialised, else 0 and 1. The loader-worker id comes from
``torch.utils.data.get_worker_info()``. Wrap a stream in :func:`make_loader` (a DataLoader
with ``batch_size=None``: batches are made inside the pipeline; loader workers persist across
epochs) and call :meth:`TrainStream.set_epoch` before each epoch, as with a DistributedSampler:
the epoch lives in shared memory, so it reaches workers started in an earlier epoch.

Guarantees (tested in tests/data/test_stream.py):

- Every rank yields the same number of batches per epoch, :meth:`TrainStream.batches_per_epoch`:
  ``resampled`` draws shards with replacement and stops each loader worker at a fixed count
  (``.with_epoch``); ``exact`` reads each shard once per epoch, split by rank then by loader
  worker, and refuses a layout in which ranks would get different batch counts (that
  deadlocks DDP) or some worker would get no shard.
- In ``exact`` mode every sample is seen exactly once per epoch across all ranks and workers.
- The batches are a function of (source, seed, epoch, rank, world size, loader workers): the
  same inputs give the same keys, pixels and flips.
- Batches are dicts: ``x`` (B, C, H, W) uint8 pixel values k for 8-bit data, float32 for
  vectors (B, D) and float .npy data (as stored); ``label`` int64 (B,) (-1 unlabeled); ``key``
  list of B str. 8-bit data crosses the loader's shared memory and the host-to-device copy as
  bytes (a quarter of float32's); every consumer turns ``x`` into the model's float32 in [0, 1]
  with :func:`to_unit_float` on its own device (k/255, bit-identical on every device).

:class:`EvalStream` reads a held-out split in manifest order (split by rank and loader worker
when there are several), with no shuffling and no flips.
"""

from __future__ import annotations

import functools
import math
import os
import random
import warnings
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dsm.core.seeding import derive_seed
from dsm.data.npy import NpySource
from dsm.data.shards import ShardError, ShardSource
from dsm.plumbing.store import Location

Mode = Literal["resampled", "exact"]
OnError = Literal["raise", "skip"]
Source = ShardSource | NpySource


def is_eight_bit(source: Source) -> bool:
    """True for 8-bit images (k/255 pixel values): their NLL is reported in the 8-bit convention.
    The one place this is decided, for training, evaluation and scoring."""
    dtype = source.manifest.dtype if hasattr(source, "manifest") else source.dtype
    return bool(source.is_image) and str(dtype) == "uint8"


def open_source(source: str | Path | Source) -> Source:
    """A split folder (with manifest.json), a manifest.json path, or a .npy file. A split
    folder may be a URL (dsm.plumbing.store: ``s3://``, ``gs://``, ``http(s)://``); a .npy must be local."""
    if isinstance(source, (ShardSource, NpySource)):
        return source
    loc = Location.of(source)
    if loc.suffix == ".npy":
        if not loc.is_local:
            raise ValueError(f"{loc}: a .npy is read whole into memory and must be a local file; "
                             "put data in a bucket as shards (`dsm data convert`, `dsm data prepare --out URL`)")
        return NpySource(loc.path)
    if loc.name == "manifest.json":
        loc = loc.parent
    return ShardSource(loc)


def dist_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the arguments, else RANK/WORLD_SIZE, else torch.distributed, else (0, 1)."""
    if rank is not None and world_size is not None:
        r, w = rank, world_size
    elif "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        r, w = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        r, w = 0, 1
    if (rank is None) != (world_size is None):
        raise ValueError("give both rank and world_size, or neither")
    if not 0 <= r < w:
        raise ValueError(f"rank {r} is not in 0..{w - 1}")
    return r, w


def worker_info() -> tuple[int, int]:
    """(loader worker id, number of loader workers); (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def assign_pieces(n_pieces: int, rank: int, world: int, worker: int, workers: int) -> list[int]:
    """Piece indices for (rank, worker): split by node (every world-th piece from ``rank``), then
    by loader worker within the node's list, as webdataset's splitters do."""
    return list(islice(islice(range(n_pieces), rank, None, world), worker, None, workers))


def _split_by_node(src: Iterator[dict], rank: int, world: int) -> Iterator[dict]:
    """The explicit node splitter handed to the pipeline (webdataset's default refuses world > 1)."""
    return islice(src, rank, None, world)


def _split_by_worker(src: Iterator[dict], worker: int, workers: int) -> Iterator[dict]:
    return islice(src, worker, None, workers)


def _shuffled(src: Iterator[dict], seed: int) -> Iterator[dict]:
    items = list(src)
    random.Random(seed).shuffle(items)
    return iter(items)


class _Reader:
    """Pipeline stage: {url: piece name} -> samples (key, x, label), with error policy and counts."""

    def __init__(self, source: Source, on_error: OnError, where: str, stats: dict):
        self.source, self.on_error, self.where, self.stats = source, on_error, where, stats
        self.pieces = {p.name: p for p in source.pieces}

    def _skip(self, what: str, err: Exception) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1
        warnings.warn(f"{self.where}: skipping {what[:-1]}: {err} ({self.stats[what]} {what} skipped so far)",
                      RuntimeWarning, stacklevel=3)

    def __call__(self, src: Iterator[dict]) -> Iterator[tuple[str, np.ndarray, int]]:
        empty_run = 0
        on_sample = None if self.on_error == "raise" else functools.partial(self._skip, "samples")
        for item in src:
            piece = self.pieces[item["url"]]
            got = 0
            try:
                for sample in self.source.read(piece, on_sample):
                    got += 1
                    yield sample
            except ShardError as e:
                if self.on_error == "raise":
                    raise
                self._skip("shards", e)
            empty_run = 0 if got else empty_run + 1
            if empty_run > 2 * len(self.pieces) + 8:  # resampled mode would spin forever otherwise
                raise ShardError(str(self.source), f"{empty_run} shards in a row gave no samples")


def _flip(src: Iterator[tuple], seed: int, enabled: bool) -> Iterator[tuple]:
    rng = random.Random(seed)
    for key, x, label in src:
        if enabled and rng.random() < 0.5:
            x = x[..., ::-1]
        yield key, x, label


def _batches(src: Iterator[tuple], batch_size: int) -> Iterator[dict[str, Any]]:
    """Stack samples into batches (the last one may be partial); 8-bit pixels stay uint8."""
    while True:
        chunk = list(islice(src, batch_size))
        if not chunk:
            return
        keys, xs, labels = zip(*chunk)
        # Copy into a C-contiguous (B, C, H, W) array: np.stack would keep the decoded HWC
        # memory order of the transposed views, and float() on that is several times slower.
        arr = np.empty((len(xs), *xs[0].shape), xs[0].dtype)
        for i, x in enumerate(xs):
            arr[i] = x
        x = torch.from_numpy(arr)
        if arr.dtype != np.uint8:  # 8-bit pixels stay bytes until the consumer's device: to_unit_float
            x = x.float()
        yield {"x": x, "label": torch.tensor(labels, dtype=torch.int64), "key": list(keys)}


class TrainStream(torch.utils.data.IterableDataset):
    """Shuffled training batches from shards or a .npy, the same number on every rank.

    source: a split folder, manifest.json or .npy (see :func:`open_source`).
    batch_size: samples per batch (per rank).
    mode: ``resampled`` (default) or ``exact`` (see the module docstring).
    batches_per_epoch: batches per rank per epoch in resampled mode; default
        ceil(num_samples / (world_size * batch_size)), about one pass over the data.
    seed, rank, world_size: see the module docstring; the epoch is set by :meth:`set_epoch`.
    loader_workers: the DataLoader's num_workers, when known up front: exact mode is then
        checked at construction rather than when iteration starts.
    shuffle_buffer: samples held per loader worker for shuffling (0 = shard order only).
    flips: random horizontal flips (images only), p = 1/2, seeded.
    on_error: ``raise`` names the bad shard; ``skip`` warns, counts (``self.skipped``
        in-process) and goes on. Exact mode allows only ``raise``: a skipped shard would
        break both the exactly-once promise and the balance between ranks.
    """

    def __init__(self, source: str | Path | Source, *, batch_size: int, mode: Mode = "resampled",
                 batches_per_epoch: int | None = None, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, loader_workers: int | None = None, shuffle_buffer: int = 1000,
                 flips: bool = False, on_error: OnError = "raise"):
        super().__init__()
        self.source = open_source(source)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if mode not in ("resampled", "exact"):
            raise ValueError(f"mode must be 'resampled' or 'exact', got {mode!r}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if mode == "exact" and on_error == "skip":
            raise ValueError("exact mode needs on_error='raise': skipping a shard would unbalance the ranks")
        if flips and not self.source.is_image:
            raise ValueError(f"flips need images; {self.source} holds vectors")
        if mode == "exact" and batches_per_epoch is not None:
            raise ValueError("batches_per_epoch is for resampled mode; exact mode reads every sample once")
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        self.rank, self.world_size = dist_info(rank, world_size)
        self.batch_size, self.mode, self.seed = batch_size, mode, seed
        self.shuffle_buffer, self.flips, self.on_error = shuffle_buffer, flips, on_error
        self._batches_per_epoch = batches_per_epoch
        self.loader_workers = loader_workers
        # In shared memory: persistent loader workers hold copies of the stream made when they
        # started, and read the epoch from here each time the loader is iterated again.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.skipped: dict[str, int] = {}
        if loader_workers is not None:
            self.batches_per_epoch(loader_workers)  # checks exact mode now

    @property
    def num_samples(self) -> int:
        return sum(p.count for p in self.source.pieces)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration reads (0 until :meth:`set_epoch`)."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next iteration, also in loader workers already started
        (call it between epochs, not while a loader is iterating)."""
        self._epoch.fill_(int(epoch))

    def _worker_quota(self, worker: int, workers: int) -> int:
        total = self.batches_per_epoch(workers)
        return total // workers + (worker < total % workers)

    def batches_per_epoch(self, loader_workers: int | None = None) -> int:
        """Batches each rank yields per epoch. Exact mode: checks balance and raises if the ranks
        differ or a (rank, worker) would get no shard."""
        workers = max(1, loader_workers if loader_workers is not None else (self.loader_workers or 0))
        if self.mode == "resampled":
            if self._batches_per_epoch is not None:
                return self._batches_per_epoch
            return max(1, math.ceil(self.num_samples / (self.world_size * self.batch_size)))
        pieces = self.source.pieces
        slots = self.world_size * workers
        if len(pieces) < slots:
            raise ValueError(f"exact mode needs at least ranks x loader workers = {self.world_size} x {workers} = "
                             f"{slots} shards; {self.source} has {len(pieces)}. Reshard with a smaller shard size, "
                             "use fewer workers, or use mode='resampled'")
        per_rank = []
        for r in range(self.world_size):
            n = 0
            for w in range(workers):
                samples = sum(pieces[i].count for i in assign_pieces(len(pieces), r, self.world_size, w, workers))
                n += math.ceil(samples / self.batch_size)
            per_rank.append(n)
        if len(set(per_rank)) > 1:
            raise ValueError(f"exact mode: the ranks would yield different numbers of batches per epoch "
                             f"{per_rank} ({self.world_size} ranks x {workers} loader workers, batch "
                             f"{self.batch_size}, {self.source}); unequal counts deadlock DDP. Use "
                             "mode='resampled', or shard counts and a batch size that divide evenly")
        return per_rank[self.rank]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        worker, workers = worker_info()
        if self.loader_workers is not None and max(1, self.loader_workers) != workers:
            raise RuntimeError(f"stream was built for {self.loader_workers} loader workers but runs in {workers}")
        where = f"rank {self.rank} worker {worker}"
        epoch = self.epoch  # read once: the whole epoch's pipeline uses the same seeds
        seed = functools.partial(derive_seed, self.seed, epoch, self.rank, self.world_size, worker, workers)
        names = [p.name for p in self.source.pieces]
        if self.mode == "resampled":
            quota = self._worker_quota(worker, workers)
            if quota == 0:
                return iter(())
            # Deterministic: the library's default resampling seeds from the clock and pid.
            shards = [wds.ResampledShards(names, seed=seed("shards"), deterministic=True,
                                          worker_seed=functools.partial(int, 0))]
        else:
            self.batches_per_epoch(workers)  # balance check with the real worker count
            shards = [wds.SimpleShardList(names),
                      functools.partial(_split_by_node, rank=self.rank, world=self.world_size),
                      functools.partial(_split_by_worker, worker=worker, workers=workers),
                      functools.partial(_shuffled, seed=seed("order"))]
        stages = [*shards, _Reader(self.source, self.on_error, where, self.skipped)]
        if self.shuffle_buffer > 0:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer,
                                      rng=random.Random(seed("buffer"))))
        stages += [functools.partial(_flip, seed=seed("flip"), enabled=self.flips),
                   functools.partial(_batches, batch_size=self.batch_size)]
        pipe = wds.DataPipeline(*stages)
        if self.mode == "resampled":
            pipe = pipe.with_epoch(quota)
        return iter(pipe)


class EvalStream(torch.utils.data.IterableDataset):
    """Held-out batches in order: no shuffling, no flips, every sample once.

    With one rank and no loader workers, the order is the manifest's (shard by shard, each
    in file order). With several, shards are split by rank then by loader worker as in
    :class:`TrainStream`'s exact mode, and the DataLoader interleaves its workers' batches
    in a fixed round robin; keys identify the samples. Ranks may get unequal counts: do not
    wrap the model in DDP for evaluation.
    """

    def __init__(self, source: str | Path | Source, *, batch_size: int, rank: int | None = None,
                 world_size: int | None = None, on_error: OnError = "raise"):
        super().__init__()
        self.source = open_source(source)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.on_error = batch_size, on_error
        self.rank, self.world_size = dist_info(rank, world_size)
        self.skipped: dict[str, int] = {}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        worker, workers = worker_info()
        pipe = wds.DataPipeline(
            wds.SimpleShardList([p.name for p in self.source.pieces]),
            functools.partial(_split_by_node, rank=self.rank, world=self.world_size),
            functools.partial(_split_by_worker, worker=worker, workers=workers),
            _Reader(self.source, self.on_error, f"rank {self.rank} worker {worker}", self.skipped),
            functools.partial(_batches, batch_size=self.batch_size))
        return iter(pipe)


def _one_thread(_: int) -> None:
    """DataLoader worker_init_fn: one torch thread per loader process (2-core machines thrash
    otherwise: docs/design.md section 8)."""
    torch.set_num_threads(1)


def make_loader(stream: TrainStream | EvalStream, num_workers: int = 0, *, pin_memory: bool = False,
                **kwargs: Any) -> torch.utils.data.DataLoader:
    """A DataLoader over a stream: batch_size=None (the stream batches), one torch thread per
    worker. Workers are started at the first iteration and kept for the next ones (each
    iteration is one epoch, the one :meth:`TrainStream.set_epoch` selected before it).

    pin_memory: page-locked batches, for a consumer on CUDA (non-blocking host-to-device
    copies in :func:`to_unit_float`)."""
    if isinstance(stream, TrainStream):
        stream.loader_workers = num_workers
        stream.batches_per_epoch(num_workers)  # exact mode: fail here, in the main process
    kwargs.setdefault("worker_init_fn", _one_thread)
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                                       persistent_workers=num_workers > 0, **kwargs)
