"""One trial of a sweep: Tune's function trainable, which drives one Ray Train run.

Ray Train V2's pattern for Tune (docs/design.md section 6): the trial function builds a
``TorchTrainer`` with ``TuneReportCallback`` and fits it; every checkpoint's report reaches
Tune, which the scheduler uses (at equal ``step``). The trial's training run has a fixed name
(``<sweep>-tNNN``) and folder, so a trial restarted by a resumed sweep continues from its last
checkpoint, and its MLflow run (a child of the sweep's run) continues too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STARTS_TAG = "dsm.trial_starts"  # on the trial's MLflow run: how often the trial was started


def trial_name(sweep: str, index: int | None, trial_id: str) -> str:
    """``<sweep>-tNNN`` for a planned trial; ``<sweep>-<tune id>`` for one Optuna proposed."""
    return f"{sweep}-t{index:03d}" if index is not None else f"{sweep}-{trial_id}"


def name_from_trial(trial: Any, sweep: str) -> str:
    """Tune's ``trial_name_creator`` / ``trial_dirname_creator`` (bound with functools.partial)."""
    entry = trial.config.get("trial") or {}
    return trial_name(sweep, entry.get("index") if isinstance(entry, dict) else None, trial.trial_id)


def run_trial(config: dict, info: dict) -> None:
    """The function trainable. ``config``: {"trial": {"index", "params"}} for a planned trial,
    or {"params": {...}} from Optuna. ``info``: what the driver planned (see dsm.tune.run)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from dsm.plumbing.config import load_config
    from dsm.plumbing.store import Location
    from dsm.train.build import resolve_data
    from dsm.train.config import TrainConfig
    from dsm.train.run import NonFiniteTraining, Plan, make_trainer, open_tracking, outcome
    from dsm.tune import slots

    entry = config.get("trial")
    ctx = ray.tune.get_context()
    if entry is not None:
        index, params = int(entry["index"]), dict(entry["params"])
        cfg = TrainConfig.model_validate(info["configs"][index])
    else:
        index, params = None, dict(config["params"])
        cfg = load_config(TrainConfig, info["base_path"], values={**info["fixed"], **params})
        cfg = resolve_data(cfg, Path(info["workspace"]), prepare=False, progress=False)
    name = trial_name(info["sweep"], index, ctx.get_trial_id())
    cfg = cfg.model_copy(update={"name": name})
    # the trial's Ray Train run: in the sweep's folder, or under --storage (its exports copied to run_dir)
    p = Plan.of(cfg, name, Path(info["workspace"]), Path(info["folder"]) / "runs" / name, (), Location.of(info["runs"]))

    tags = {"dsm.sweep": info["sweep"], "dsm.sweep_params": json.dumps(params, default=str)[:5000]}
    if info.get("parent_run_id"):
        tags["mlflow.parentRunId"] = info["parent_run_id"]  # nested under the sweep's run in the UI
    uri, run_tags, run_id = open_tracking(p, extra_tags=tags, command="tune")
    _count_start(uri, run_id)
    trainer = make_trainer(p, uri, run_id, run_tags, callbacks=[TuneReportCallback()])
    slots.wait_for_slot(info["sweep"], name)  # its turn to train (see dsm.tune.slots)
    try:
        result = trainer.fit()
    finally:
        slots.release(info["sweep"], name)
    try:
        outcome(p, result)
    except NonFiniteTraining as e:
        raise RuntimeError(f"trial {name}: {e}") from None


def _count_start(uri: str, run_id: str | None) -> None:
    """One more start of the trial on its MLflow run (STARTS_TAG): a resumed sweep restarts its
    unfinished trials and keeps its finished ones, and this is where that shows."""
    from dsm.runtime.tracking import best_effort

    def bump(client) -> None:
        starts = int(client.get_run(run_id).data.tags.get(STARTS_TAG, "0"))
        client.set_tag(run_id, STARTS_TAG, str(starts + 1))

    if run_id is not None:
        best_effort("tune", uri, bump)
