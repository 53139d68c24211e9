"""The driver of ``dsm tune``: plan, (dry run,) open the sweep's MLflow run, run or resume Tune,
and leave the results table, figure and best config.

The sweep's name is deterministic (the spec's stem and a hash of the spec, its base config and
the overrides), and so is every trial's. Re-running the same command restores the Tune
experiment: finished trials are kept, unfinished ones restart, and their training runs
resume from their last checkpoints.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from dsm.tune.plan import SweepPlan, check_local_cpus, describe, make_plan
from dsm.tune.results import TrialResult, best, status_of, write_best_config, write_figure, write_table
from dsm.tune.spec import nice


def _info(plan: SweepPlan, parent_run_id: str | None) -> dict:
    """What every trial needs from the driver (sent once through the object store)."""
    return {"sweep": plan.name, "folder": str(plan.folder), "workspace": str(plan.workspace),
            "runs": (plan.experiment / "runs").url,
            "base_path": str(plan.spec_path.resolve().parent / plan.spec.base), "fixed": plan.fixed,
            "configs": [t.cfg.model_dump(mode="json") for t in plan.trials] if plan.trials else None,
            "parent_run_id": parent_run_id}


def _tuner(plan: SweepPlan, info: dict, concurrent: int):
    """A new Tuner for the plan, or the restored one when the sweep's folder holds one."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from dsm.tune.trial import name_from_trial, run_trial

    spec = plan.spec
    resources = {"CPU": spec.resources.trial_cpu, "memory": spec.resources.trial_memory_mb * 2**20}
    trainable = tune.with_resources(tune.with_parameters(run_trial, info=info), resources)
    if plan.trials is not None:
        space = {"trial": tune.grid_search([{"index": t.index, "params": t.params} for t in plan.trials])}
        search_alg, num_samples = None, 1
    else:
        from ray.tune.search.optuna import OptunaSearch

        dist = {"choice": lambda p: tune.choice(p.choice), "uniform": lambda p: tune.uniform(*p.uniform),
                "loguniform": lambda p: tune.loguniform(*p.loguniform), "randint": lambda p: tune.randint(*p.randint)}
        space = {"params": {k: dist[p.kind](p) for k, p in spec.space.items()}}
        search_alg, num_samples = OptunaSearch(seed=spec.seed), spec.samples
    if tune.Tuner.can_restore(plan.experiment.url):  # unpickles Tune's state: the storage must be trusted
        print(f"dsm tune: resuming sweep {plan.name!r} from {plan.experiment}", flush=True)
        return tune.Tuner.restore(plan.experiment.url, trainable=trainable, resume_unfinished=True,
                                  resume_errored=True, param_space=space)
    if spec.scheduler.kind == "asha":
        # time_attr "step": ASHA compares trials at equal training steps (reports come at checkpoints)
        scheduler = ASHAScheduler(time_attr="step", max_t=plan.max_steps, grace_period=spec.scheduler.grace_period,
                                  reduction_factor=spec.scheduler.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    namer = functools.partial(name_from_trial, sweep=plan.name)
    return tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=num_samples,
                                    scheduler=scheduler, search_alg=search_alg,
                                    max_concurrent_trials=concurrent,
                                    trial_name_creator=namer, trial_dirname_creator=namer),
        run_config=tune.RunConfig(name=plan.name, storage_path=plan.experiment.parent.url,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def _error_summary(err: BaseException) -> str:
    """One readable line for a trial's error (dsm.plumbing.errors.short_cause)."""
    from dsm.plumbing.errors import short_cause

    return short_cause(err)


def _collect(plan: SweepPlan, grid) -> list[TrialResult]:
    """One TrialResult per trial of Tune's ResultGrid, in trial order."""
    from dsm.tune.trial import trial_name

    out = []
    for r in grid:
        cfg = r.config or {}
        entry = cfg.get("trial")
        index = entry.get("index") if isinstance(entry, dict) else None
        params = entry["params"] if isinstance(entry, dict) else dict(cfg.get("params", {}))
        trial_id = (r.metrics or {}).get("trial_id") or Path(r.path).name
        name = trial_name(plan.name, index, trial_id) if index is not None else Path(r.path).name
        m = r.metrics or {}
        value = m.get(plan.spec.metric)
        value = float(value) if isinstance(value, (int, float)) else math.nan
        tcfg = plan.trials[index].cfg if index is not None else plan.trial_config(params, prepare=False)
        step = int(m.get("step", 0) or 0)
        out.append(TrialResult(name, params, value, step, tcfg.steps, status_of(step, tcfg.steps, r.error is not None),
                               tcfg.model_dump(mode="json"), "" if r.error is None else _error_summary(r.error)))
    out.sort(key=lambda t: t.name)
    return out


def _open_parent(plan: SweepPlan) -> str | None:
    from dsm.runtime.tracking import flatten, open_run, tracking_uri

    if not plan.spec.tracking.enabled:
        return None
    params = flatten({"spec": plan.spec.model_dump(mode="json")})
    tags = {"dsm.kind": "sweep", "dsm.sweep_folder": str(plan.folder), "dsm.sweep_storage": str(plan.experiment)}
    return open_run(plan.spec.tracking.experiment, plan.name, tracking_uri(plan.workspace), plan.workspace,
                    params, tags, command="tune")


def _log_parent(plan: SweepPlan, parent: str | None, results: list[TrialResult], files: list[Path],
                top: TrialResult | None) -> None:
    """Artifacts and best metric on the sweep's run; each child's status set from its trial's."""
    from dsm.runtime.tracking import RUN_NAME_TAG, best_effort, tracking_uri

    def log(client) -> None:
        for f in files:
            client.log_artifact(parent, str(f))
        if top is not None:
            client.log_metric(parent, f"best/{plan.spec.metric}", top.metric)
            client.set_tag(parent, "dsm.best_trial", top.name)
        exp = client.get_run(parent).info.experiment_id
        counts = {s: sum(r.status == s for r in results) for s in ("completed", "stopped_early", "error")}
        for k, v in counts.items():
            client.log_metric(parent, f"trials/{k}", v)
        for r in results:
            found = client.search_runs([exp], filter_string=f"tags.`{RUN_NAME_TAG}` = '{r.name}'", max_results=1)
            if found:
                rid = found[0].info.run_id
                client.set_tag(rid, "dsm.tune_status", r.status)
                if r.status != "completed":
                    client.set_terminated(rid, "KILLED" if r.status == "stopped_early" else "FAILED")
        client.set_terminated(parent, "FINISHED")

    if parent is not None:
        best_effort("tune", tracking_uri(plan.workspace), log)


def trial_demand(plan: SweepPlan):
    """What one trial places (its Ray Train workers, and the function that drives them), for the
    largest trial of the sweep: the cluster must hold at least that (dsm.runtime.resources)."""
    from dsm.runtime.resources import Demand

    cfgs = [t.cfg for t in plan.trials] if plan.trials else [plan.base]
    big = max(cfgs, key=lambda c: (c.scaling.gpu * c.scaling.workers, plan.trial_cpus(c)))
    r = plan.spec.resources
    return Demand(big.scaling.worker_resources(), big.scaling.workers,
                  extra=[{"CPU": r.trial_cpu, "memory": r.trial_memory_mb * 2**20}])


def concurrency(plan: SweepPlan) -> int:
    """Trials training at once: ``max_concurrent``, else as many as the cluster's CPUs and GPUs
    hold at their ceiling (the nodes alive, plus what an autoscaler can add when Ray tells),
    at least one. A head with 0 CPUs counts for nothing, not against the sweep."""
    from dsm.runtime.resources import capacity

    if plan.spec.max_concurrent:
        return plan.spec.max_concurrent
    ceiling = capacity().ceiling
    cfgs = [t.cfg for t in plan.trials] if plan.trials else [plan.base]
    fits = []
    for c in cfgs:
        per = {k: v * c.scaling.workers for k, v in c.scaling.worker_resources().items()}
        per["CPU"] = plan.trial_cpus(c)
        fits.append(min(math.floor((ceiling.get(k, 0.0) + 1e-9) / v) for k, v in per.items() if v > 0))
    return max(1, min(fits))


def run(plan: SweepPlan, address: str | None = None, verbose: bool = False) -> Path:
    """Run or resume the sweep (dsm.runtime.driver's sequence); returns the best config's path
    (or the results table's). Trials checkpoint under ``plan.experiment`` (the sweep's folder,
    or ``<storage>/<sweep>``), so that is the storage every node must see."""
    from dsm.runtime.driver import Job, Tracking, drive
    from dsm.runtime.tracking import tracking_uri

    job = Job("tune", address, storage=plan.experiment.parent.url, error_log=plan.folder / "error.log",
              resume_hint=f"re-run the same command to resume sweep {plan.name!r}",
              check_local=lambda: check_local_cpus(plan), log_to_driver=verbose,
              demand=trial_demand(plan), resource_timeout_s=plan.base.scaling.resource_timeout_s)
    return drive(job, lambda parent: _sweep(plan, parent),
                 Tracking(tracking_uri(plan.workspace), lambda: _open_parent(plan)))


def _sweep(plan: SweepPlan, parent: str | None) -> Path:
    """The sweep on a joined Ray: Tune's trials, then the results table, figure and best config,
    logged on the sweep's run ``parent``."""
    from dsm.tune import slots

    n = concurrency(plan)
    holder = slots.create(plan.name, n)  # noqa: F841 - kept alive for the sweep's length
    grid = _tuner(plan, _info(plan, parent), n).fit()
    results = _collect(plan, grid)
    out = plan.folder / "results"
    out.mkdir(parents=True, exist_ok=True)
    files = [write_table(results, plan.spec.metric, out / "results.csv"),
             write_figure(results, plan.spec, out / "metric_vs_params.png")]
    top = best(results, plan.spec.mode)
    if top is not None:
        files.append(write_best_config(top, out / "best_config.yaml"))
    _log_parent(plan, parent, results, files, top)
    _print_summary(plan, results, top)
    return files[-1]


def _print_summary(plan: SweepPlan, results: list[TrialResult], top: TrialResult | None) -> None:
    keys = list(plan.spec.space)
    print(f"\nsweep {plan.name!r}: {len(results)} trial(s)")
    for r in results:
        mark = "*" if top is not None and r.name == top.name else " "
        vals = ", ".join(f"{k}={nice(r.params.get(k))}" for k in keys)
        print(f"{mark} {r.name}  {vals}  {plan.spec.metric}={nice(r.metric)}  step {r.step}/{r.steps}  {r.status}"
              + (f"  ({r.error[:120]})" if r.error else ""))
    if top is None:
        print("no trial reported the metric")
    errors = sum(r.status == "error" for r in results)
    if errors:
        print(f"{errors} trial(s) failed (errors above; Tune's error.txt in each trial folder); re-running the "
              "same command retries them and keeps the finished ones")
    print(f"results: {plan.folder / 'results'}")


def main(spec: str, overrides: list[str], *, workspace: str | None, address: str | None, dry_run: bool,
         verbose: bool = False, storage: str | None = None) -> int:
    """``dsm tune``: returns the exit code."""
    plan = make_plan(spec, overrides, workspace, prepare_data=not dry_run, storage=storage)
    if dry_run:
        print(describe(plan))
        print("dry run: nothing started")
        return 0
    print(describe(plan), flush=True)
    last = run(plan, address, verbose)  # failures become exit codes in dsm.plumbing.errors.exit_code
    print(last)
    return 0 if last.name == "best_config.yaml" else 1
