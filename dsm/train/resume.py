"""Resuming a run: which config changes a resume may make, what the last checkpoint holds, and
how ``dsm train --dry-run`` says what a command would do (new or resumed, from which step), and
how to continue a run that a changed ``steps`` would otherwise start afresh.

The run name hashes the whole config, so ``steps=4000`` on a finished 2000-step run names a new
run; ``--resume NAME`` (or ``name=NAME``) continues the old one, and both the dry run and the
start of the new run say so.
"""

from __future__ import annotations

from pathlib import Path

from dsm.plumbing.config import ConfigError
from dsm.plumbing.store import Location
from dsm.runtime.tracking import flatten
from dsm.train.config import TrainConfig

# Config sections (and single fields) a resumed run may change: how long it runs, how often it
# reports, checkpoints and evaluates, where it logs, its arithmetic, and how it waits for and
# survives the cluster. Everything else shapes the weights, the optimizer or the data order that
# the checkpoint holds.
RESUME_MAY_CHANGE = ("name", "steps", "log_every", "checkpoint", "eval", "tracking", "precision",
                     "scaling.max_failures", "scaling.resource_timeout_s", "scaling.memory_per_worker_gb")


def check_resumable(cfg: TrainConfig, run_dir: Path | Location) -> tuple[dict, str | None]:
    """A run folder (local or a URL) that holds checkpoints resumes only under the config that
    wrote them (up to RESUME_MAY_CHANGE). Otherwise ConfigError, one line naming the differing
    fields, before Ray starts: a fixed ``name=`` reused for another architecture would else fail
    in every worker with pages of size mismatches. Returns what :func:`last_checkpoint` read."""
    run_dir = Location.of(run_dir)
    state, where = last_checkpoint(run_dir)
    if where is None:
        return state, where
    try:
        stored = TrainConfig.model_validate(state.get("config") or {})
    except ValueError as e:
        raise ConfigError(f"{where}: its config is not one this dsm reads ({str(e).splitlines()[0]}); "
                          f"give another name= or delete {run_dir}") from None
    differ = _beyond_a_resume(cfg, stored)
    if differ:
        shown = (", ".join(f"{k} ({then} -> {now})" for k, (then, now) in list(differ.items())[:4])
                 + (" ..." if len(differ) > 4 else ""))
        raise ConfigError(f"run {run_dir.name!r} in {run_dir} was trained with another config: {shown}; "
                          f"give another name=, or delete that folder to start afresh")
    return state, where


def _beyond_a_resume(cfg: TrainConfig, stored: TrainConfig) -> dict[str, tuple]:
    """The dotted fields where ``cfg`` differs from a run's ``stored`` config that a resume may not
    change, sorted: {field: (stored value, new value)}."""
    now, then = flatten(cfg.model_dump(mode="json")), flatten(stored.model_dump(mode="json"))
    return {k: (then.get(k), now.get(k)) for k in sorted(now.keys() | then.keys())
            if now.get(k) != then.get(k) and k.split(".")[0] not in RESUME_MAY_CHANGE and k not in RESUME_MAY_CHANGE}


def last_checkpoint(run_dir: Location) -> tuple[dict, str | None]:
    """(the run's latest checkpoint state: its config, step, ..., with the weights memory-mapped,
    not read; that checkpoint's state.pt); ({}, None) when there is none. Ray Train names
    checkpoint folders by time, so the last name is the latest."""
    import tempfile

    from dsm.plumbing.fileio import load_torch_file

    if run_dir.is_local:
        states = sorted(run_dir.path.glob("checkpoint_*/state.pt"), key=lambda f: f.stat().st_mtime)
        if not states:
            return {}, None
        return load_torch_file(states[-1], "dsm training checkpoint", mmap=True), str(states[-1])
    folders = [f for f in run_dir.subfolders() if f.name.startswith("checkpoint_")]
    states = [f / "state.pt" for f in folders if "state.pt" in f.listing()]
    if not states:
        return {}, None
    with tempfile.TemporaryDirectory(prefix="dsm-ckpt-") as tmp:
        local = Path(tmp) / "state.pt"
        local.write_bytes(states[-1].read_bytes())
        return load_torch_file(local, "dsm training checkpoint"), str(states[-1])


def _stored_config(run_dir: Location) -> tuple[TrainConfig | None, int | None]:
    """The config and step of a run folder's last checkpoint, else of its finished export's
    config.yaml (step None); (None, None) when there is neither, or it is not readable."""
    import yaml

    from dsm.train.outputs import CONFIG_FILE

    try:
        state, where = last_checkpoint(run_dir)
        if where is not None:
            return TrainConfig.model_validate(state.get("config") or {}), int(state.get("step", 0))
        finished = run_dir / CONFIG_FILE
        if finished.is_file():
            return TrainConfig.model_validate(yaml.safe_load(finished.read_text())), None
    except (ValueError, OSError, yaml.YAMLError):
        pass  # not a run this dsm can continue: not a candidate
    return None, None


def continuable_runs(cfg: TrainConfig, runs: Location, but: str) -> list[tuple[str, int | None]]:
    """Runs in the local folder ``runs`` (but not the one named ``but``) that ``cfg`` could continue:
    their config differs from it only where a resume may change it (``steps`` ...). (name, the
    step of its last checkpoint, or None when only its finished config is left)."""
    if not runs.is_local or not runs.path.is_dir():
        return []  # a bucket is not listed for a hint
    found = []
    for folder in sorted(f for f in runs.path.iterdir() if f.is_dir() and f.name != but):
        stored, step = _stored_config(Location.of(folder))
        if stored is not None and not _beyond_a_resume(cfg, stored):
            found.append((folder.name, step))
    return found


def continue_hint(cfg: TrainConfig, runs: Location, name: str, command: str) -> str | None:
    """One line for a new run that an existing run's config matches up to ``steps`` and the like:
    how to continue that one instead (``command``: the dsm train command line, without --resume)."""
    found = continuable_runs(cfg, runs, name)
    if not found:
        return None
    other, step = found[-1]
    at = f"at step {step}" if step is not None else "finished"
    return (f"note: run {other!r} ({at}) has this config up to steps and other settings a resume may change; "
            f"this starts a new run {name!r}. To continue {other!r} instead: {command} --resume {other}")


def require_run(runs: Location, name: str) -> None:
    """``--resume NAME``: the run must exist (a checkpoint or a finished export), else ConfigError
    listing the runs there are."""
    stored, _ = _stored_config(runs / name)
    if stored is None:
        local = runs.is_local and runs.path.is_dir()
        there = sorted(f.name for f in runs.path.iterdir() if f.is_dir()) if local else []
        listed = f" (runs there: {', '.join(there[:8])}{' ...' if len(there) > 8 else ''})" if there else ""
        raise ConfigError(f"--resume {name}: no run {name!r} with a checkpoint in {runs}{listed}")


def describe(cfg: TrainConfig, workspace: Path, stem: str, storage: str | None) -> list[str]:
    """What ``dsm train`` would do with ``cfg``, in lines, for ``--dry-run``: the run and whether it
    is new or resumed (from which step), the data, the workers, the outputs. Prepares, starts and
    writes nothing; raises the ConfigError the real start would raise."""
    from dsm.train.build import check_buildable, planned_data, prepared_dir
    from dsm.train.outputs import RunOutputs

    resolved, unprepared = planned_data(cfg, workspace)
    name = resolved.run_name(stem)
    run_dir = workspace / "runs" / name
    out = RunOutputs.of(name, run_dir, Location.of(storage) if storage else None).out
    state, where = check_resumable(resolved, out)  # read once: a bucket's checkpoint is downloaded
    lines = [f"run: {name!r}, " + (f"resumed from step {int(state.get('step', 0))} of {resolved.steps}"
                                   if where else f"new, {resolved.steps} steps")]
    if unprepared:
        lines.append(f"data: {cfg.data.dataset!r} is not prepared yet: it would be prepared into "
                     f"{prepared_dir(cfg, workspace)} (train and test splits)")
    else:
        shape = check_buildable(resolved)
        lines.append(f"data: {resolved.data.path} (held out: {resolved.data.eval_path}), examples of shape "
                     f"{shape.shape}")
    s = resolved.scaling
    lines.append(f"workers: {s.workers} x ({s.cpus_per_worker:g} CPU" + (", 1 GPU" if s.gpu else "")
                 + (f", {s.memory_per_worker_gb:g} GiB" if s.memory_per_worker_gb else "") + f"), batch "
                 f"{resolved.data.batch_size} ({resolved.per_worker_batch} per worker)")
    lines.append(f"outputs: {run_dir}" + (f", checkpoints and models in {out}" if out != Location.of(run_dir) else "")
                 + (f"; MLflow experiment {resolved.tracking.experiment!r}" if resolved.tracking.enabled else ""))
    if not where:
        hint = continue_hint(resolved, out.parent, name, "dsm train ...")
        if hint:
            lines.append(hint)
    return lines

