"""MLflow defaults: a SQLite store under the workspace unless MLFLOW_TRACKING_URI is set.

The file store is in maintenance mode and raises, so the embedded default is SQLite; every
experiment gets an explicit artifact_location under the workspace, or artifacts would land
in ./mlruns of whatever directory the process runs in (docs/design.md section 8).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_WORKSPACE = "dsm-runs"


def workspace_dir(workspace: str | Path | None = None) -> Path:
    """The workspace folder: the argument, else $DSM_WORKSPACE, else ./dsm-runs; created."""
    p = Path(workspace or os.environ.get("DSM_WORKSPACE", DEFAULT_WORKSPACE)).resolve()
    p.mkdir(parents=True, exist_ok=True)
    return p


def tracking_uri(workspace: str | Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI if set, else ``sqlite:///<workspace>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace_dir(workspace) / 'mlflow.db'}"


def set_tracking_uri(uri: str) -> None:
    """``mlflow.set_tracking_uri`` without its side effect on ``$MLFLOW_TRACKING_URI``.

    MLflow also writes the URI into the environment, where :func:`tracking_uri` would then
    take it for the user's choice: a second workspace in the same process (a notebook, the
    tests) would silently log to the first one's store.
    """
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def use_experiment(name: str, workspace: str | Path | None = None) -> str:
    """Point MLflow at the tracking URI and select (creating if needed) experiment ``name``."""
    import mlflow  # imported here: the math core and `dsm --help` should not pay for it

    set_tracking_uri(tracking_uri(workspace))
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        artifacts = (workspace_dir(workspace) / "artifacts" / name).as_uri()
        exp_id = mlflow.create_experiment(name, artifact_location=artifacts)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``: nested configs as MLflow params."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]  # MLflow's param value limit
    return out


def git_commit() -> str:
    """The dsm source tree's git commit (with ``-dirty`` when modified), or ``unknown``."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def quick_fail_http() -> None:
    """Make MLflow give up on an unreachable HTTP tracking server in seconds, not minutes
    (its defaults retry with back-off for several minutes): training must not stall on it."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def best_effort(command: str, uri: str, action, consequence: str = "results are on disk only"):
    """``action(client)`` with an MlflowClient for ``uri``, returning its result; any MLflow
    failure is printed as one line and gives None. Tracking never fails a dsm command."""
    import sys

    try:
        from mlflow.tracking import MlflowClient

        quick_fail_http()
        set_tracking_uri(uri)
        return action(MlflowClient(uri))
    except Exception as e:  # noqa: BLE001 - any tracking failure: say so and go on
        print(f"dsm {command}: MLflow at {uri} is unavailable ({type(e).__name__}: {e}); {consequence}",
              file=sys.stderr)
        return None


def child_run(client, model_run_id: str | None, experiment: str, workspace: str | Path | None,
              run_name: str) -> str:
    """A new run about a trained model (its normalization, scores or report): nested under the
    model's training run when that run is in this store, else in ``experiment``; tagged
    ``dsm.model_run_id`` either way. Returns its id."""
    tags = {"dsm.model_run_id": str(model_run_id)} if model_run_id else {}
    exp_id = None
    if model_run_id:
        try:
            exp_id = client.get_run(model_run_id).info.experiment_id
            tags["mlflow.parentRunId"] = model_run_id  # shows nested under the training run in the UI
        except Exception:  # noqa: BLE001 - the training run lives in another store, or was deleted
            exp_id = None
    exp_id = exp_id or use_experiment(experiment, workspace)
    return client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
