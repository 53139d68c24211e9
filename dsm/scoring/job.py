"""``dsm score`` as a Ray Data job: one parquet part per input piece, written atomically.

The dataset is the list of pieces not yet scored; ``map_batches`` sends them to a pool of
actors (``ActorPoolStrategy``), each of which loads the model once and writes
``parts/part-<piece>.parquet`` in one atomic write (:meth:`dsm.plumbing.store.Location.write_bytes`:
a local temporary file renamed into place, or one PUT to an object store, which makes an
object visible only once whole). Re-running the same command therefore skips finished parts
and redoes only the rest: no duplicated and no missing rows. ``out`` is a local folder or an
``s3://``/``gs://`` URL (``file://`` is a local folder; ``http(s)://`` is read-only and refused).
A piece (a shard, 1000 rows of a .npy, 1000 images) is the unit because it is also the unit
of resumption; within it, rows are scored in batches of ``spec.batch_size``.
Per-example noise is seeded from the key, so the numbers do not depend on the actor count,
the batch size or the order.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dsm.api import ModelRef, resolve
from dsm.core import consistency as cons
from dsm.data.inputs import Input, iter_examples, open_input
from dsm.plumbing.fileio import sha256_file
from dsm.plumbing.store import Location, StoreError, writable_location
from dsm.runtime.resources import DEFAULT_TIMEOUT_S, RESOURCE_TIMEOUT_FLAG
from dsm.scoring.columns import GRID_COLUMNS, ScoreSpec, score_batch

PARTS, OPTIONS_FILE = "parts", "scores.json"


def part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def part_path(out: Path | Location, index: int) -> Path | Location:
    """Piece ``index``'s part under ``out`` (a Path gives a Path, a Location a Location)."""
    return out / PARTS / part_name(index)


def out_location(out: str | Path | Location) -> Location:
    """``--out`` as a Location; an HTTP URL is refused here, in one line, before anything starts."""
    return writable_location(out, "--out")


class PieceScorer:
    """A Ray Data actor: loads the model once, then scores whole pieces into parquet parts."""

    def __init__(self, model_ref: ModelRef, data: str, out: str, spec: ScoreSpec, threads: int = 1,
                 device: str = "cpu"):
        import torch

        torch.set_num_threads(threads)
        self.model = resolve(model_ref, device)
        self.inp = open_input(data)
        self.out, self.spec, self.device = Location.of(out), spec, device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.score_piece(int(i)) for i in batch["piece"]]
        return {"piece": np.asarray(batch["piece"]).copy(), "rows": np.asarray(rows)}

    def score_piece(self, index: int) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq
        import torch

        keys, x, labels = self.inp.read(index)
        cols: dict[str, list] = {}
        for a in range(0, len(keys), self.spec.batch_size):
            xb = torch.from_numpy(x[a:a + self.spec.batch_size].copy()).to(self.device)
            got = score_batch(self.model.energy_model, self.model.to_model(xb), keys[a:a + self.spec.batch_size],
                              self.spec, eight_bit=self.inp.eight_bit)
            for k, v in got.items():
                cols.setdefault(k, []).append(v)
        arrays = {"key": pa.array(keys, pa.string()), "label": pa.array(labels, pa.int64())}
        for k, parts in cols.items():
            v = np.concatenate(parts)
            arrays[k] = (pa.array(list(v), pa.list_(pa.float64(), v.shape[1])) if k in GRID_COLUMNS
                         else pa.array(v, pa.float64()))
        table = pa.table(arrays).replace_schema_metadata({"dsm.t_grid": json.dumps(list(self.spec.t_grid))})
        buf = io.BytesIO()  # a piece's part is small (1000 rows at most): built in memory, then
        pq.write_table(table, buf)  # written in one atomic write, so it exists whole or not at all
        part_path(self.out, index).write_bytes(buf.getvalue())
        return len(keys)


# Kept in scores.json for people; two runs are the same job when everything else matches.
NOT_IDENTITY = {"model", "data", "batch_size"}


def job_options(model_ref: ModelRef, model, inp: Input, spec: ScoreSpec, model_label: str | None = None, *,
                device: str = "cpu") -> dict:
    """What makes two runs the same job: a resumed run must match, or parts would mix. The model
    and the data count by content (the model file's sha256 and its log Z, the data's
    :meth:`Input.digest`), not by path: re-normalizing the model or rewriting the data in place
    makes a new job. model: the loaded ``model_ref`` (a :class:`dsm.api.Model`). The spec's
    precision and ``device`` ("cpu" or "cuda", where the actors score) count too: parts computed
    in other arithmetic differ in the last digits, and one table must not mix them."""
    is_file = isinstance(model_ref, (str, Path))
    label = model_label or (str(Path(model_ref).resolve()) if is_file else model.source)
    return {"model": label, "data": str(inp.path),
            "model_sha256": sha256_file(model_ref) if is_file else f"in-memory:{label}",
            "model_log_z": model.log_z if model.normalized else None, "data_sha256": inp.digest(),
            "pieces": len(inp.pieces), **asdict(spec), "t_grid": list(spec.t_grid), "device": device}


def prepare_out(out: str | Path | Location, options: dict, restart: bool = False) -> list[int]:
    """Create ``out``, check that it holds this job (or nothing), clear stale temporary files;
    returns the piece indices still to score. restart: discard what ``out`` holds (parts and
    scores.json) and start this job afresh. ``out``: a local folder or an object-store URL,
    whose finished parts are found with one listing (not one request per part)."""
    out = out_location(out)
    if (out.path.exists() and not out.path.is_dir()) if out.is_local else out.is_file():
        raise ValueError(f"--out {out} is a file; give a folder (it will hold parts/ and {OPTIONS_FILE})")
    opt_file, parts = out / OPTIONS_FILE, out / PARTS
    if restart:
        for name in parts.listing():
            if name.startswith("part-") and name.endswith(".parquet"):
                (parts / name).remove()
        opt_file.remove()
    parts.mkdir()
    if OPTIONS_FILE in out.listing():
        old = json.loads(opt_file.read_text()).get("options", {})
        diff = sorted(k for k in options if k not in NOT_IDENTITY and old.get(k) != options[k])
        if diff:
            raise ValueError(f"{out} holds scores of another job (differs in {', '.join(diff)}); "
                             "pass --restart to discard them and score afresh, or use another --out")
    else:
        write_json(opt_file, {"options": options, "status": "running"})
    if out.is_local:  # a writer killed mid-write leaves its temporary file (an object store, nothing)
        for tmp in parts.path.glob(".part-*.tmp"):
            tmp.unlink()
    done = parts.listing()
    return [i for i in range(options["pieces"]) if part_name(i) not in done]


def write_json(path: str | Path | Location, obj: dict) -> None:
    """``obj`` as JSON at ``path`` (a local path or a URL), atomically (a reader never sees half a file)."""
    Location.of(path).write_text(json.dumps(obj, indent=1))


def actor_demand(actors: int, gpu: bool, pending: int, cpus_per_actor: float = 0.5):
    """The scoring actors as a dsm.runtime.resources Demand: one to start, up to ``actors``."""
    from dsm.runtime.resources import Demand

    per = {"CPU": cpus_per_actor, "GPU": 1.0 if gpu else 0.0}
    return Demand(per, max(1, min(actors, pending)), unit="actor", at_least=1, timeout_field=RESOURCE_TIMEOUT_FLAG)


def actor_pool(demand):
    """Ray Data's actor pool for ``demand``: as many actors as the cluster can ever hold (at most
    the count asked, said once when fewer), a fixed pool when they fit now, else one that starts
    with those that fit and grows as the autoscaler adds nodes: a pool sized beyond the cluster
    would wait forever for its last actor."""
    import ray.data

    from dsm.runtime.resources import capacity, describe, how_many_fit

    cap = capacity()
    most = max(1, how_many_fit(demand, cap.ceiling))
    if most < demand.count:
        print(f"dsm score: {demand.count} actors asked, but the cluster can hold {most} of "
              f"{describe(demand.per)}; scoring with {most}", file=sys.stderr, flush=True)
    now = how_many_fit(demand, cap.now)
    if now >= most:
        return ray.data.ActorPoolStrategy(size=most)
    return ray.data.ActorPoolStrategy(min_size=max(1, now), max_size=most)


def run_pieces(model_ref: ModelRef, data: str | Path | Location, out: str | Path | Location, spec: ScoreSpec,
               pending: list[int], *, actors: int, gpu: bool, cpus_per_actor: float = 0.5) -> int:
    """Score ``pending`` pieces on a Ray Data actor pool; returns the rows written."""
    import ray.data

    if not pending:
        return 0
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    ds = ray.data.from_items([{"piece": i} for i in pending], override_num_blocks=len(pending))
    # The actors get full URLs (Location.url): str() of a Location hides a URL's user:password.
    where = {k: v.url if isinstance(v, Location) else str(v) for k, v in (("data", data), ("out", out))}
    ds = ds.map_batches(
        PieceScorer, batch_size=1, compute=actor_pool(actor_demand(actors, gpu, len(pending), cpus_per_actor)),
        fn_constructor_kwargs={"model_ref": model_ref, **where, "spec": spec,
                               "threads": max(1, int(cpus_per_actor)), "device": "cuda" if gpu else "cpu"},
        # Actors must leave CPU for Ray Data's own read and write tasks (docs/design.md section 8).
        num_cpus=cpus_per_actor, num_gpus=1 if gpu else 0)
    return int(sum(r["rows"] for r in ds.take_all()))


def read_scores(out: str | Path | Location):
    """All parts as one pyarrow Table, sorted by key. ``out``: a local folder or a URL (whose
    parts are fetched whole, a few at a time: one part is at most 1000 rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    loc = Location.of(out)
    names = sorted(n for n in (loc / PARTS).listing() if n.startswith("part-") and n.endswith(".parquet"))
    if not names:
        raise ValueError(f"{loc}: no scored parts")
    if loc.is_local:
        table = pq.ParquetDataset([str(loc.path / PARTS / n) for n in names]).read()
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:  # one GET each; latency, not bandwidth, is the cost
            blobs = list(pool.map(lambda n: (loc / PARTS / n).read_bytes(), names))
        table = pa.concat_tables([pq.read_table(io.BytesIO(b)) for b in blobs])
    return table.sort_by("key")


def consistency_of(model_ref: ModelRef, model, inp: Input, samples: int, options: cons.Options, *, gpu: bool,
                   job) -> dict:
    """The consistency summary on the first ``samples`` examples of the input: in this process
    on its CPU with ``model`` (``model_ref`` already loaded), or with ``gpu`` in a Ray task that
    loads ``model_ref`` on a GPU (``job``: the dsm.runtime.driver Job the task runs under), so
    that a GPU job never ends with a long CPU computation on the driver."""
    from dsm.runtime.driver import gpu_task

    data = inp.path.url if isinstance(inp.path, Location) else str(inp.path)
    if not gpu:
        return consistency_on(lambda: model, data, samples, options, "cpu")
    return gpu_task(job, consistency_on, model_ref, data, samples, options, "cuda")


def consistency_on(model_ref: ModelRef, data: str, samples: int, options: cons.Options, device: str) -> dict:
    """:func:`consistency_of`'s computation, on ``device``."""
    import torch

    from dsm.core.losses import band_edges
    from dsm.scoring.summary import consistency_summary

    model, keys, xs = resolve(model_ref, device), [], []
    for k, x, _ in iter_examples(open_input(data), samples):
        keys += k
        xs.append(torch.from_numpy(x))
    x = model.to_model(torch.cat(xs).to(device))
    return consistency_summary(model.energy_model, x, keys, band_edges=band_edges(*model.t_range),
                               options=options)


def error_log_path(out: Location) -> Path:
    """Where a failed job's full traceback goes; always a local file (this process writes it):
    ``out/error.log`` for a local ``out``; for a URL,
    ``$TMPDIR/dsm-score-<first 12 hex digits of the URL's sha256>/error.log`` (one per --out:
    a re-run's failure replaces the last one's), of which :func:`_run_job` uploads a copy to
    ``out/error.log`` when it can."""
    if out.is_local:
        return out.path / "error.log"
    digest = hashlib.sha256(out.url.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"dsm-score-{digest}" / "error.log"


def score_job(out: Location, address: str | None, resource_timeout_s: float):
    """The dsm.runtime.driver Job of a scoring run writing to ``out``. Its shared-storage check
    sees ``out`` as given: a URL as its URL string (s3:// and gs:// pass on any cluster), a
    local folder as its path (refused on more than one node unless declared shared), so the
    parts are written where every node sees them."""
    from dsm.runtime.driver import Job

    return Job("score", address, storage=out.path if out.is_local else out.url, error_log=error_log_path(out),
               resume_hint="re-run the same command to score the rest; finished parts are kept",
               log_to_driver=False, resource_timeout_s=resource_timeout_s)


def _run_job(model_ref: ModelRef, inp: Input, out: Location, spec: ScoreSpec, pending: list[int], *,
             actors: int, gpu: bool, job) -> None:
    """The Ray job over ``pending`` pieces, through dsm.runtime.driver (``job``: :func:`score_job`),
    its actors secured first (at least one must fit; the pool takes as many as the cluster holds)."""
    import dataclasses

    from dsm.plumbing.errors import JobFailed
    from dsm.runtime.cluster import check_local_gpus
    from dsm.runtime.driver import drive

    job = dataclasses.replace(job, demand=actor_demand(actors, gpu, len(pending)),
                              check_local=(lambda: check_local_gpus(1, "--gpu")) if gpu else None)
    try:
        drive(job, lambda _: run_pieces(model_ref, inp.path, out, spec, pending, actors=actors, gpu=gpu))
    except JobFailed as e:
        if not out.is_local:  # also beside the parts, where whoever reads the bucket looks
            try:
                (out / "error.log").upload(e.log)
            except StoreError:
                pass  # the local copy, named in the message, is the one that counts
        raise


def score(model_ref: ModelRef, data: str | Path, out: str | Path | Location, spec: ScoreSpec | None = None, *,
          actors: int = 2, gpu: bool = False, model_label: str | None = None,
          consistency: cons.Options | None = None, consistency_samples: int = 256, restart: bool = False,
          address: str | None = None, resource_timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Score every example of ``data`` into ``out/parts``; returns the summary (also in scores.json).
    The arguments are :func:`score_table`'s."""
    return score_table(model_ref, data, out, spec, actors=actors, gpu=gpu, model_label=model_label,
                       consistency=consistency, consistency_samples=consistency_samples, restart=restart,
                       address=address, resource_timeout_s=resource_timeout_s)[0]


def score_table(model_ref: ModelRef, data: str | Path, out: str | Path | Location, spec: ScoreSpec | None = None, *,
                actors: int = 2, gpu: bool = False, model_label: str | None = None,
                consistency: cons.Options | None = None, consistency_samples: int = 256, restart: bool = False,
                address: str | None = None, resource_timeout_s: float = DEFAULT_TIMEOUT_S):
    """Score every example of ``data`` into ``out/parts``; returns (summary, the scores table as
    read back from ``out``: a pyarrow Table, one row per example), so that a caller drawing
    figures does not download the parts again.

    ``data``: a shard split folder (local or a URL), a .npy or an image folder. ``out``: a
    local folder or an ``s3://``/``gs://`` URL (``file://`` is local; ``http(s)://`` is refused).
    Checks everything it can before Ray starts: ``out`` is writable, the model loads and is
    normalized, the data is readable and non-empty, its shape matches the model, and ``out``
    holds this job or nothing.
    consistency: the self-consistency checks (:mod:`dsm.core.consistency`) run after the job on the
    first ``consistency_samples`` examples (at least 2); None (the default here; ``dsm score``
    runs them unless ``--consistency-samples 0``) skips them. restart: discard the scores ``out``
    holds, even of another job, and start afresh. address: the Ray cluster to join (default
    $RAY_ADDRESS, else a local Ray); on more than one node ``out`` must be shared storage
    (dsm.runtime.storage), or the parts would be scattered over the nodes' disks.
    resource_timeout_s: how long to wait for a cluster that can grow to provide one actor (and
    with ``gpu``, the consistency checks' GPU task, which runs on a GPU too). A failure of
    the Ray job raises dsm.plumbing.errors.JobFailed, its traceback in the local file
    :func:`error_log_path` names (``out/error.log`` for a local ``out``).
    """
    import torch

    from dsm.scoring.summary import summarize

    spec = spec or ScoreSpec()
    out = out_location(out)
    inp = open_input(data)
    inp.check_finite()
    model = resolve(model_ref)
    model.require_normalized()
    model.to_model(torch.zeros(1, *inp.shape))  # shape check: raises naming both shapes
    if spec.dequantize and not inp.eight_bit:
        raise ValueError(f"--dequantize needs 8-bit images; {inp.path} is not 8-bit")
    options = job_options(model_ref, model, inp, spec, model_label, device="cuda" if gpu else "cpu")
    pending = prepare_out(out, options, restart)
    job = score_job(out, address, resource_timeout_s)
    if pending:
        _run_job(model_ref, inp, out, spec, pending, actors=actors, gpu=gpu, job=job)
    table = read_scores(out)
    keys = table.column("key").to_pylist()
    if len(keys) != inp.num_samples or len(set(keys)) != len(keys):
        raise RuntimeError(f"{out}: {len(keys)} rows ({len(set(keys))} distinct keys) for {inp.num_samples} inputs")
    summary = summarize(table, spec.t_grid, model.dim)
    summary["model_mlflow_run_id"] = model.meta.get("mlflow_run_id")  # the training run, for lineage
    summary.update(model_sha256=options["model_sha256"], device=options["device"])  # which file, scored where
    if consistency is not None and inp.num_samples >= 2:
        summary["consistency"] = consistency_of(model_ref, model, inp, max(2, consistency_samples), consistency,
                                                gpu=gpu, job=job)
    write_json(out / OPTIONS_FILE, {"options": options, "status": "finished", "summary": summary,
                                     "columns": table.column_names})
    return summary, table
