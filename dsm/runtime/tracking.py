"""MLflow defaults: a SQLite store under the workspace unless MLFLOW_TRACKING_URI is set.

The file store is in maintenance mode and raises, so the embedded default is SQLite; every
experiment gets an explicit artifact_location under the workspace, or artifacts would land
in ./mlruns of whatever directory the process runs in (docs/design.md section 8).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_WORKSPACE = "dsm-runs"
RUN_NAME_TAG = "dsm.run_name"  # how a resumed run finds its MLflow run
# Every dsm experiment is model training, not GenAI: the kind MLflow 3 records for "Machine
# learning" experiments (its UI's own switch is the workflowType, set in dsm ui's URL: ui_url).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def workspace_dir(workspace: str | Path | None = None, create: bool = True) -> Path:
    """The workspace folder: the argument, else $DSM_WORKSPACE, else ./dsm-runs; created unless not ``create``."""
    p = Path(workspace or os.environ.get("DSM_WORKSPACE", DEFAULT_WORKSPACE)).resolve()
    if create:
        p.mkdir(parents=True, exist_ok=True)
    return p


def tracking_uri(workspace: str | Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI if set, else ``sqlite:///<workspace>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace_dir(workspace) / 'mlflow.db'}"


ARTIFACT_ROOT_ENV = "DSM_ARTIFACT_ROOT"


def artifact_root(workspace: str | Path | None = None) -> str:
    """Where new experiments keep their artifacts: ``$DSM_ARTIFACT_ROOT`` (a bucket URL such as
    ``s3://bucket/mlflow``, which every node of a cluster reaches: docs/cluster.md), else
    ``<workspace>/artifacts``. An environment variable, like $DSM_SHARED_STORAGE: it is a
    property of the cluster, not of a run."""
    root = os.environ.get(ARTIFACT_ROOT_ENV, "").strip().rstrip("/")
    return root or (workspace_dir(workspace) / "artifacts").as_uri()


def use_experiment(name: str, workspace: str | Path | None = None, client=None) -> str:
    """The id of experiment ``name`` in the workspace's store (``client``'s, when given), created
    if needed with its artifacts under :func:`artifact_root`.

    Through an MlflowClient, not MLflow's fluent API: that keeps the URI in process-wide state
    and in ``$MLFLOW_TRACKING_URI``, where :func:`tracking_uri` would take it for the user's choice
    and a second workspace in the same process (a notebook, the tests) would log to the first.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient  # imported here: the core and `dsm --help` do not pay for it

    client = client or MlflowClient(tracking_uri(workspace))
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        artifacts = f"{artifact_root(workspace)}/{name}"
        return client.create_experiment(name, artifact_location=artifacts, tags=EXPERIMENT_TAGS)
    except MlflowException:  # created meanwhile by another process (two sweep trials, say)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


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
    sha, dirty = git_state()
    return sha + ("-dirty" if dirty else "")


def git_state() -> tuple[str, bool]:
    """(commit, whether tracked files are modified) of the dsm source tree; ``("unknown", False)``
    outside a git checkout (an installed wheel)."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def source_tags(command: str) -> dict[str, str]:
    """The tags a new run gets about where it came from: MLflow's own (the runs table's Source
    and Version columns: ``dsm COMMAND``, LOCAL or JOB inside a Ray Job, the commit) plus
    ``mlflow.source.git.dirty`` and dsm's ``dsm.git_commit`` (the commit, ``-dirty`` when the tree
    was modified)."""
    sha, dirty = git_state()
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ or "RAY_JOB_ID" in os.environ
    tags = {"mlflow.source.name": f"dsm {command}", "mlflow.source.type": "JOB" if in_job else "LOCAL",
            "mlflow.source.git.dirty": str(dirty).lower(), "dsm.git_commit": sha + ("-dirty" if dirty else "")}
    if sha != "unknown":
        tags["mlflow.source.git.commit"] = sha
    return tags


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
        return action(MlflowClient(uri))
    except Exception as e:  # noqa: BLE001 - any tracking failure: say so and go on
        print(f"dsm {command}: MLflow at {uri} is unavailable ({type(e).__name__}: {e}); {consequence}",
              file=sys.stderr)
        return None


def child_run(client, model_run_id: str | None, experiment: str, workspace: str | Path | None,
              run_name: str, command: str, tags: dict[str, str] | None = None) -> str:
    """A new run of ``dsm COMMAND`` about a trained model (its normalization, scores or report):
    nested under the model's training run when that run is in this store, else in
    ``experiment``; tagged ``dsm.model_run_id`` either way, and with :func:`source_tags` and
    ``tags``. Returns its id."""
    tags = {**source_tags(command), **(tags or {})}
    if model_run_id:
        tags["dsm.model_run_id"] = str(model_run_id)
    exp_id = None
    if model_run_id:
        try:
            exp_id = client.get_run(model_run_id).info.experiment_id
            tags["mlflow.parentRunId"] = model_run_id  # shows nested under the training run in the UI
        except Exception:  # noqa: BLE001 - the training run lives in another store, or was deleted
            exp_id = None
    exp_id = exp_id or use_experiment(experiment, workspace, client)
    return client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id


def open_run(experiment: str, run_name: str, tracking_uri: str, workspace: str | Path | None, params: dict[str, str],
             tags: dict[str, str], command: str = "train") -> str | None:
    """The id of the MLflow run called ``run_name`` in ``experiment``: the existing one (a
    resumed run) or a new one with ``params`` and ``tags``. None, with a message, when the
    tracking server cannot be reached."""
    def find_or_create(client) -> str:
        from mlflow.entities import Param

        exp_id = use_experiment(experiment, workspace, client)
        found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
                                   max_results=1, order_by=["attributes.start_time DESC"])
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            return run_id
        run_id = client.create_run(exp_id, run_name=run_name,
                                   tags={RUN_NAME_TAG: run_name, **source_tags(command), **tags}).info.run_id
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow's log_batch takes at most 100 params
            client.log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
        return run_id

    return best_effort(command, tracking_uri, find_or_create, "training goes on without tracking")

def close_run(uri: str, run_id: str | None, status: str, cause: str, command: str = "train") -> None:
    """End the MLflow run as ``status`` (FAILED or KILLED) with ``cause`` as its dsm.failure tag;
    nothing without a run id, and an MLflow failure here is one line, never raised."""
    if run_id is None:
        return

    def close(client) -> None:
        client.set_tag(run_id, "dsm.status", status.lower())
        client.set_tag(run_id, "dsm.failure", cause[:5000])
        client.set_terminated(run_id, status)

    best_effort(command, uri, close, "the run's status there is stale")


def log_dataset(client, run_id: str, inp, context: str) -> None:
    """``inp`` (a :class:`dsm.data.inputs.Input`) as a dataset input of the run, in ``context``
    (training, evaluation, scoring): its name (``<folder>/<split>`` or the file's stem), source
    (the path), digest (the first 16 hex digits of :meth:`~dsm.data.inputs.Input.digest`: the
    manifest's sha256 for shards, so two runs on the same data show the same digest), schema
    (one tensor of the data's shape and dtype) and profile (count, shape, dtype, kind)."""
    import numpy as np
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import Schema, TensorSpec

    from dsm.plumbing.store import Location

    path = Location.of(inp.path)  # a local path or a URL (without any user:password@)
    name = Path(path.name).stem if inp.kind == "npy" else f"{path.parent.name}/{path.name}"
    dtype = np.dtype(np.uint8 if inp.eight_bit else np.float32)
    # MLflow picks a URL's source type (s3, gs, http...); for a local path it registers the same
    # class twice and warns about the ambiguity, so that one is named here.
    source = LocalArtifactDatasetSource(str(path)) if path.is_local else resolve_dataset_source(str(path))
    meta = MetaDataset(source, name=name, digest=inp.digest()[:16],
                       schema=Schema([TensorSpec(dtype, (-1, *inp.shape), "x")])).to_dict()
    profile = {"num_samples": inp.num_samples, "shape": list(inp.shape), "dtype": str(dtype), "format": inp.kind}
    ds = Dataset(name=meta["name"], digest=meta["digest"], source_type=meta["source_type"], source=meta["source"],
                 schema=meta.get("schema"), profile=json.dumps(profile))
    client.log_inputs(run_id, datasets=[DatasetInput(ds, tags=[InputTag("mlflow.data.context", context)])])


def ui_url(port: int, experiment: str, workspace: str | Path | None = None, host: str = "127.0.0.1") -> str:
    """The MLflow UI's URL of ``experiment``'s runs table (the experiments list when it does not
    exist yet), in MLflow 3's "machine learning" view: without ``workflowType`` the UI opens in
    its GenAI view, on a traces page. host: where the server listens (for a wildcard address,
    this machine's address on its default route)."""
    base = f"http://{_reachable(host)}:{port}/#/experiments"
    try:
        from mlflow.tracking import MlflowClient

        exp = MlflowClient(tracking_uri(workspace)).get_experiment_by_name(experiment)  # creates a new store
    except Exception:  # noqa: BLE001 - an unreadable store: the server will say why
        exp = None
    where = f"/{exp.experiment_id}/runs" if exp is not None else ""
    return f"{base}{where}?workflowType=machine_learning"


def _reachable(host: str) -> str:
    """``host``, or for a wildcard address (0.0.0.0, ::) this machine's address on its default
    route (a UDP socket's connect sends nothing), or its name when there is no route."""
    import socket

    if host not in ("0.0.0.0", "::", ""):
        return f"[{host}]" if ":" in host else host
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
        except OSError:
            return socket.gethostname()
