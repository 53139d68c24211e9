"""``dsm score`` as a Ray Data job: one parquet part per input piece, written atomically.

The dataset is the list of pieces not yet scored; ``map_batches`` sends them to a pool of
actors (``ActorPoolStrategy``), each of which loads the model once and writes
``parts/part-<piece>.parquet`` through a temporary file renamed into place. Re-running the
same command therefore skips finished parts and redoes only the rest: no duplicated and no
missing rows. A piece (a shard, 1000 rows of a .npy, 1000 images) is the unit because it is
also the unit of resumption; within it, rows are scored in batches of ``spec.batch_size``.
Per-example noise is seeded from the key, so the numbers do not depend on the actor count,
the batch size or the order.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dsm import consistency as cons
from dsm.api import ModelRef, resolve
from dsm.data.inputs import Input, iter_examples, open_input
from dsm.data.shards import sha256_file
from dsm.fileio import atomic_path
from dsm.scoring.columns import GRID_COLUMNS, ScoreSpec, score_batch

PARTS, OPTIONS_FILE = "parts", "scores.json"
# The noise range of a model given as a callable (an exact toy density): the shipped configs'.


def part_path(out: Path, index: int) -> Path:
    return out / PARTS / f"part-{index:06d}.parquet"


class PieceScorer:
    """A Ray Data actor: loads the model once, then scores whole pieces into parquet parts."""

    def __init__(self, model_ref: ModelRef, data: str, out: str, spec: ScoreSpec, threads: int = 1,
                 device: str = "cpu"):
        import torch

        torch.set_num_threads(threads)
        self.model = resolve(model_ref, device)
        self.inp = open_input(data)
        self.out, self.spec, self.device = Path(out), spec, device

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
        final = part_path(self.out, index)
        with atomic_path(final) as tmp:  # a part exists whole or not at all
            pq.write_table(table, tmp)
        return len(keys)


# Kept in scores.json for people; two runs are the same job when everything else matches.
NOT_IDENTITY = {"model", "data", "batch_size"}


def job_options(model_ref: ModelRef, model, inp: Input, spec: ScoreSpec, model_label: str | None = None) -> dict:
    """What makes two runs the same job: a resumed run must match, or parts would mix. The model
    and the data count by content (the model file's sha256 and its log Z, the data's
    :meth:`Input.digest`), not by path: re-normalizing the model or rewriting the data in place
    makes a new job. model: the loaded ``model_ref`` (a :class:`dsm.api.Model`)."""
    is_file = isinstance(model_ref, (str, Path))
    label = model_label or (str(Path(model_ref).resolve()) if is_file else model.source)
    return {"model": label, "data": str(inp.path),
            "model_sha256": sha256_file(model_ref) if is_file else f"in-memory:{label}",
            "model_log_z": model.log_z if model.normalized else None, "data_sha256": inp.digest(),
            "pieces": len(inp.pieces), **asdict(spec), "t_grid": list(spec.t_grid)}


def prepare_out(out: Path, options: dict, restart: bool = False) -> list[int]:
    """Create ``out``, check that it holds this job (or nothing), clear stale temporary files;
    returns the piece indices still to score. restart: discard what ``out`` holds (parts and
    scores.json) and start this job afresh."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder (it will hold parts/ and {OPTIONS_FILE})")
    opt_file = out / OPTIONS_FILE
    if restart:
        for f in [*(out / PARTS).glob("part-*.parquet"), opt_file]:
            f.unlink(missing_ok=True)
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    if opt_file.is_file():
        old = json.loads(opt_file.read_text()).get("options", {})
        diff = sorted(k for k in options if k not in NOT_IDENTITY and old.get(k) != options[k])
        if diff:
            raise ValueError(f"{out} holds scores of another job (differs in {', '.join(diff)}); "
                             "pass --restart to discard them and score afresh, or use another --out")
    else:
        write_json(opt_file, {"options": options, "status": "running"})
    for tmp in (out / PARTS).glob(".part-*.tmp"):
        tmp.unlink()
    return [i for i in range(options["pieces"]) if not part_path(out, i).is_file()]


def write_json(path: Path, obj: dict) -> None:
    """``obj`` as JSON at ``path``, atomically (a reader never sees half a file)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))


def run_pieces(model_ref: ModelRef, data: Path, out: Path, spec: ScoreSpec, pending: list[int], *,
               actors: int, gpu: bool, cpus_per_actor: float = 0.5) -> int:
    """Score ``pending`` pieces on a Ray Data actor pool; returns the rows written."""
    import ray.data

    if not pending:
        return 0
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    ds = ray.data.from_items([{"piece": i} for i in pending], override_num_blocks=len(pending))
    ds = ds.map_batches(
        PieceScorer, batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=max(1, min(actors, len(pending)))),
        fn_constructor_kwargs={"model_ref": model_ref, "data": str(data), "out": str(out), "spec": spec,
                               "threads": max(1, int(cpus_per_actor)), "device": "cuda" if gpu else "cpu"},
        # Actors must leave CPU for Ray Data's own read and write tasks (docs/design.md section 8).
        num_cpus=cpus_per_actor, num_gpus=1 if gpu else 0)
    return int(sum(r["rows"] for r in ds.take_all()))


def read_scores(out: Path):
    """All parts as one pyarrow Table, sorted by key."""
    import pyarrow.parquet as pq

    files = sorted((out / PARTS).glob("part-*.parquet"))
    if not files:
        raise ValueError(f"{out}: no scored parts")
    table = pq.ParquetDataset([str(f) for f in files]).read()
    return table.sort_by("key")


def _consistency(model, inp, samples: int, options: cons.Options) -> dict:
    """The consistency summary on the first ``samples`` examples of the input (on this process's CPU)."""
    import torch

    from dsm.scoring.summary import consistency_summary
    from dsm.train.evaluate import band_edges

    keys, xs = [], []
    for k, x, _ in iter_examples(inp, samples):
        keys += k
        xs.append(torch.from_numpy(x))
    x = model.to_model(torch.cat(xs))
    return consistency_summary(model.energy_model, x, keys, band_edges=band_edges(*model.t_range),
                               options=options)


def score(model_ref: ModelRef, data: str | Path, out: str | Path, spec: ScoreSpec | None = None, *,
          actors: int = 2, gpu: bool = False, model_label: str | None = None,
          consistency: cons.Options | None = None, consistency_samples: int = 256, restart: bool = False,
          address: str | None = None) -> dict:
    """Score every example of ``data`` into ``out/parts``; returns the summary (also in scores.json).

    Checks everything it can before Ray starts: the model loads and is normalized, the data is
    readable and non-empty, its shape matches the model, and ``out`` holds this job or nothing.
    consistency: the self-consistency checks (:mod:`dsm.consistency`) run after the job on the
    first ``consistency_samples`` examples (at least 2); None (the default here; ``dsm score``
    runs them unless ``--consistency-samples 0``) skips them. restart: discard the scores ``out``
    holds, even of another job, and start afresh. address: the Ray cluster to join (default
    $RAY_ADDRESS, else a local Ray); on more than one node ``out`` must be shared storage
    (dsm.runtime.storage), or the parts would be scattered over the nodes' disks. A failure of
    the Ray job raises dsm.errors.JobFailed (its traceback in ``out/error.log``).
    """
    import torch

    from dsm.scoring.summary import summarize

    spec = spec or ScoreSpec()
    out = Path(out).expanduser().resolve()
    inp = open_input(data)
    inp.check_finite()
    model = resolve(model_ref)
    model._require_normalized()
    model.to_model(torch.zeros(1, *inp.shape))  # shape check: raises naming both shapes
    if spec.dequantize and not inp.eight_bit:
        raise ValueError(f"--dequantize needs 8-bit images; {inp.path} is not 8-bit")
    options = job_options(model_ref, model, inp, spec, model_label)
    pending = prepare_out(out, options, restart)
    if pending:  # the parts are written where every node sees them (dsm.runtime.driver)
        from dsm.runtime.driver import Job, drive

        job = Job("score", address, storage=out, error_log=out / "error.log",
                  resume_hint="re-run the same command to score the rest; finished parts are kept",
                  log_to_driver=False)
        drive(job, lambda _: run_pieces(model_ref, inp.path, out, spec, pending, actors=actors, gpu=gpu))
    table = read_scores(out)
    keys = table.column("key").to_pylist()
    if len(keys) != inp.num_samples or len(set(keys)) != len(keys):
        raise RuntimeError(f"{out}: {len(keys)} rows ({len(set(keys))} distinct keys) for {inp.num_samples} inputs")
    summary = summarize(table, spec.t_grid, model.dim)
    summary["model_mlflow_run_id"] = model.meta.get("mlflow_run_id")  # the training run, for lineage
    if consistency is not None and inp.num_samples >= 2:
        summary["consistency"] = _consistency(model, inp, max(2, consistency_samples), consistency)
    write_json(out / OPTIONS_FILE, {"options": options, "status": "finished", "summary": summary,
                                     "columns": table.column_names})
    return summary

