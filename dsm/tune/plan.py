"""From a spec to the trials of a sweep, all validated; starts nothing (no Ray, no MLflow).

Random and grid searches are expanded here, with a seeded generator, into an explicit list
of trials: the dry run prints exactly what will run, a resumed sweep sees the same list, and
each trial has a stable name (``<sweep>-tNNN``). Optuna proposes its trials during the sweep,
so only the space is validated for it (every value it can produce, one field at a time).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsm.plumbing.config import ConfigError, flatten_keys, load_config
from dsm.plumbing.store import Location
from dsm.train.config import TrainConfig
from dsm.tune.spec import Param, SweepSpec, field_exists, nice, sweep_name


@dataclass(frozen=True)
class Trial:
    """One planned trial: ``params`` are the swept values (dotted keys), ``cfg`` the full config."""

    index: int
    params: dict[str, Any]
    cfg: TrainConfig

    def name(self, sweep: str) -> str:
        return f"{sweep}-t{self.index:03d}"


@dataclass
class SweepPlan:
    """A validated sweep: its name, folders, the base config, and the trials (None for Optuna)."""

    spec: SweepSpec
    name: str
    spec_path: Path
    workspace: Path
    base: TrainConfig  # base config + fixed overrides + resources, data resolved
    fixed: dict[str, Any]  # the dotted overrides every trial gets
    trials: list[Trial] | None
    max_steps: int
    notes: list[str] = field(default_factory=list)
    # Where Tune keeps the sweep and its trials' training runs (checkpoints, exports):
    # ``<storage>/<name>`` (a URL with --storage s3://...); None: ``folder`` itself.
    storage: str | None = None

    @property
    def folder(self) -> Path:
        """The sweep's local folder: the results table, figure and best config (``results/``),
        the error log, and (without ``storage``) Tune's experiment itself."""
        return self.workspace / "sweeps" / self.name

    @property
    def experiment(self) -> Location:
        """Tune's experiment folder; the trials' training runs live in its ``runs/``."""
        return Location.of(self.storage) / self.name if self.storage else Location.of(self.folder)

    def trial_cpus(self, cfg: TrainConfig | None = None) -> float:
        cfg = cfg or self.base
        return self.spec.resources.trial_cpu + cfg.scaling.workers * cfg.scaling.cpus_per_worker

    def trial_config(self, params: dict[str, Any], prepare: bool = True) -> TrainConfig:
        """The full training config of a trial with these swept values, its data resolved
        (a built-in data set is prepared once into the workspace). Raises ConfigError."""
        from dsm.train.build import resolve_data

        cfg = load_config(TrainConfig, self.spec_path.parent / self.spec.base, values={**self.fixed, **params})
        try:
            return resolve_data(cfg, self.workspace, prepare=prepare, progress=False)
        except ConfigError as e:
            if prepare or "is not prepared" not in str(e):
                raise
            note = f"{e}: prepared on the first real run"
            if note not in self.notes:
                self.notes.append(note)
            return cfg


def _expand(spec: SweepSpec) -> list[dict[str, Any]]:
    """The trials' swept values, in a fixed order: the grid (first key slowest) repeated
    ``samples`` times; sampled fields drawn from one generator seeded by ``spec.seed``."""
    rng = np.random.default_rng(spec.seed)
    enumerate_kinds = ("grid", "choice") if spec.search == "grid" else ("grid",)
    grid_keys = [k for k, p in spec.space.items() if p.kind in enumerate_kinds]
    grid = list(itertools.product(*[getattr(spec.space[k], spec.space[k].kind) for k in grid_keys])) or [()]
    out = []
    for rep in range(spec.samples):
        for combo in grid:
            fixed = dict(zip(grid_keys, combo))
            params = {k: fixed[k] if k in fixed else _draw(p, rng) for k, p in spec.space.items()}
            if spec.search == "grid" and spec.samples > 1 and "seed" not in spec.space:
                params["seed"] = spec.seed + rep  # repeats of a grid differ by their seed
            out.append(params)
    return out


def _draw(p: Param, rng: np.random.Generator) -> Any:
    if p.kind == "choice":
        return p.choice[int(rng.integers(len(p.choice)))]
    if p.kind == "uniform":
        return float(rng.uniform(*p.uniform))
    if p.kind == "loguniform":
        lo, hi = p.loguniform
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    if p.kind == "randint":
        return int(rng.integers(*p.randint))
    raise ValueError(p.kind)  # grid values are enumerated, never drawn


def _check_trial(plan_spec: SweepSpec, cfg: TrainConfig, what: str) -> None:
    """The metric is reported, and ASHA's rungs fall on reported steps."""
    from dsm.train.loop import reported_metrics

    names = reported_metrics(cfg)
    if plan_spec.metric not in names:
        hint = ""
        if plan_spec.metric.startswith("eval/") and not cfg.eval.enabled:
            hint = " (eval.enabled is false)"
        elif plan_spec.metric in ("eval/nll_bpd", "eval/log_z") and cfg.model.kind != "energy":
            hint = " (only energy models are normalized)"
        raise ConfigError(f"metric: {what} never reports {plan_spec.metric!r}{hint}; it reports: "
                          f"{', '.join(sorted(names))}")
    sch = plan_spec.scheduler
    if sch.kind == "asha":
        every = cfg.checkpoint.every
        if sch.grace_period % every:
            raise ConfigError(f"scheduler.grace_period ({sch.grace_period}) must be a multiple of checkpoint.every "
                              f"({every}) in {what}: metrics are reported at checkpoints, and ASHA must compare "
                              "trials at equal steps")
        if sch.grace_period >= cfg.steps:
            raise ConfigError(f"scheduler.grace_period ({sch.grace_period}) must be below steps ({cfg.steps}) in "
                              f"{what}, or ASHA can never stop it early")


def make_plan(spec_path: str | Path, overrides: list[str] = (), workspace: str | Path | None = None,
              prepare_data: bool = True, progress: bool = True, storage: str | None = None) -> SweepPlan:
    """Load and validate a spec and expand its trials; ``storage``: see SweepPlan.storage and
    dsm.runtime.storage.storage_root. Raises ConfigError naming the field."""
    from dsm.runtime.storage import storage_root
    from dsm.runtime.tracking import workspace_dir
    from dsm.train.build import check_buildable

    spec_path = Path(spec_path)
    spec = load_config(SweepSpec, spec_path, list(overrides))
    spec = spec.model_copy(update={"overrides": flatten_keys(spec.overrides)})
    base_path = (spec_path.resolve().parent / spec.base)
    _check_spec(spec, spec_path, base_path)
    fixed = {**spec.overrides, **spec.resource_overrides(), "tracking.experiment": spec.tracking.experiment,
             "tracking.enabled": spec.tracking.enabled}
    ws = workspace_dir(workspace)
    plan = SweepPlan(spec, "", spec_path, ws, None, fixed, None, 0, storage=storage_root(storage))  # type: ignore[arg-type]
    try:
        plan.base = plan.trial_config({}, prepare=prepare_data)
    except ConfigError as e:
        raise ConfigError(f"base config with the spec's overrides: {e}") from None
    if not plan.notes:
        check_buildable(plan.base)
    plan.max_steps = plan.base.steps
    if spec.search == "optuna":
        _check_optuna_extremes(plan, prepare_data)
    else:
        _expand_trials(plan, prepare_data)
    text = spec_path.read_text()
    plan.name = sweep_name(spec, spec_path.stem, text + "\n" + "\n".join(overrides), base_path.read_text(), [])
    return plan


def _check_spec(spec: SweepSpec, spec_path: Path, base_path: Path) -> None:
    """The spec's base config exists, and every swept or overridden key is a training config field
    that a sweep may set."""
    if not base_path.is_file():
        raise ConfigError(f"base: training config {str(base_path)!r} does not exist (relative to {spec_path})")
    for key in [*spec.space, *spec.overrides]:
        msg = field_exists(TrainConfig, key)
        if msg:
            where = "space" if key in spec.space else "overrides"
            raise ConfigError(f"{where}: {msg}")
    for key in ("name", "tracking.experiment"):
        if key in spec.space:
            raise ConfigError(f"space: {key!r} is set by the sweep and cannot be swept")


def _check_optuna_extremes(plan: SweepPlan, prepare_data: bool) -> None:
    """Optuna draws its trials as it goes: check each swept field's extreme values instead."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("search: optuna is not installed (pip install optuna), or use random or grid") from None
    for key, p in plan.spec.space.items():
        for v in p.extremes():
            cfg = _trial_cfg(plan, {key: v}, f"{key}={nice(v)}", prepare_data)
            _check_trial(plan.spec, cfg, f"the trial with {key}={nice(v)}")
            plan.max_steps = max(plan.max_steps, cfg.steps)


def _expand_trials(plan: SweepPlan, prepare_data: bool) -> None:
    """Grid or random search: every trial's config, checked, and each distinct model and data built."""
    from dsm.train.build import check_buildable

    plan.trials = []
    for i, params in enumerate(_expand(plan.spec)):
        what = f"trial {i} ({', '.join(f'{k}={nice(v)}' for k, v in params.items())})"
        cfg = _trial_cfg(plan, params, what, prepare_data)
        _check_trial(plan.spec, cfg, what)
        plan.trials.append(Trial(i, params, cfg))
        plan.max_steps = max(plan.max_steps, cfg.steps)
    if not plan.notes:
        for cfg in {t.cfg.model_dump_json(include={"model", "data"}): t.cfg for t in plan.trials}.values():
            check_buildable(cfg)  # each distinct architecture and data, on the meta device


def _trial_cfg(plan: SweepPlan, params: dict[str, Any], what: str, prepare: bool) -> TrainConfig:
    try:
        return plan.trial_config(params, prepare=prepare)
    except ConfigError as e:
        raise ConfigError(f"space: {what} gives an invalid training config: {e}") from None


def check_local_cpus(plan: SweepPlan, cpus: float | None = None) -> None:
    """Before a local Ray starts: one trial must fit this machine's CPUs (or ``cpus``), and its
    GPUs when the trials ask for them. (A joined cluster is checked by dsm.runtime.resources.)"""
    have = cpus if cpus is not None else float(os.cpu_count() or 1)
    cfgs = [t.cfg for t in plan.trials] if plan.trials else [plan.base]
    need = max(plan.trial_cpus(c) for c in cfgs)
    if need > have + 1e-9:
        r = plan.spec.resources
        raise ConfigError(f"resources: one trial needs {need:g} CPUs (trial_cpu {r.trial_cpu:g} + workers x "
                          f"cpus_per_worker), but {have:g} are available; lower resources.workers or "
                          "resources.cpus_per_worker, or give --address of a larger cluster")
    gpus = max((c.scaling.workers for c in cfgs if c.scaling.gpu), default=0)
    if gpus:
        from dsm.runtime.cluster import check_local_gpus

        check_local_gpus(gpus, "resources.gpu")


def describe(plan: SweepPlan) -> str:
    """The dry run's text: what would run, and the resources each trial claims."""
    s = plan.spec
    lines = [f"sweep {plan.name!r}: {s.search} search, metric {s.metric} ({s.mode}), scheduler {s.scheduler.kind}"
             + (f" (grace {s.scheduler.grace_period} steps, reduction x{s.scheduler.reduction_factor}, "
                f"max {plan.max_steps} steps)" if s.scheduler.kind == "asha" else ""),
             f"base config: {(plan.spec_path.parent / s.base).resolve()}; outputs in {plan.folder}"
             + (f"; checkpoints in {plan.experiment}" if plan.storage else "")]
    b = plan.base
    per = (f"{b.scaling.workers} worker(s) x {b.scaling.cpus_per_worker:g} CPU" + (" + 1 GPU" if b.scaling.gpu else "")
           + (f" + {s.resources.trial_cpu:g} CPU for the trial function" if s.resources.trial_cpu else ""))
    conc = s.max_concurrent or "as many as the cluster holds"
    if plan.trials is None:
        lines.append(f"{s.samples} trial(s) proposed by Optuna over: "
                     + ", ".join(f"{k} {p.kind} {list(map(nice, p.extremes()))}" for k, p in s.space.items()))
        lines.append(f"each trial: {per}; at most {conc} training at once")
        return "\n".join(lines)
    keys = list(plan.trials[0].params)
    lines += [f"note: {n}" for n in plan.notes]
    lines.append(f"{len(plan.trials)} trial(s); each: {per}; at most {conc} training at once")
    header = ["trial", *keys, "steps", "CPUs"]
    rows = [[t.name(plan.name), *[nice(t.params[k]) for k in keys], str(t.cfg.steps), f"{plan.trial_cpus(t.cfg):g}"]
            for t in plan.trials]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
