"""A dsm model file as an MLflow model: logged on its training run, registered on request, and
read back by ``dsm score models:/NAME/VERSION`` (docs/training.md, "The model in MLflow").

The MLflow model is the pyfunc flavour around the bundle (``artifacts/bundle/model.pt``, the
file ``dsm train`` exports, unchanged). ``mlflow.pyfunc.load_model(uri).predict(x)`` takes x, a
float32 array (n, *shape) of pixels in [0, 1] in the data's own layout, and returns a DataFrame
with one row per image: ``logp_nats`` (normalized log p), ``nll_bpd`` (bits/dim, the model's
convention: 8-bit for image models) and ``energy_nats`` (U(x, 0)). dsm must be installed where
the model is loaded: the flavour's code is ``DensityModel`` in ``pyfunc_entry.py``.

Everything goes through an ``MlflowClient`` (MLflow 3's logged models: create, upload, link to
the run as its output, finalize), never the fluent API, which would set a process-wide URI.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import mlflow.pyfunc

BUNDLE_KEY = "bundle"  # the pyfunc artifact that holds the bundle
MODEL_NAME = "dsm-model"  # the logged model's name on its run (not "model": MLflow 3 would list it under
# the run's artifact path "model", where the bundle files already are)
SHA_TAG = "dsm.bundle_sha256"  # on the logged model: which bundle it holds (logged once per file)
COLUMNS = ("logp_nats", "nll_bpd", "energy_nats")
ENTRY = Path(__file__).with_name("pyfunc_entry.py")  # a model from code: no pickled Python object


def _signature(shape: tuple[int, ...]):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))]),
                          outputs=Schema([ColSpec("double", c) for c in COLUMNS]))


def _requirements() -> list[str]:
    """Given, not inferred: MLflow's inference imports the model and takes seconds."""
    import numpy
    import pandas
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
            f"numpy=={numpy.__version__}", f"pandas=={pandas.__version__}"]


def logged_model_of(client, run_id: str, sha256: str) -> str | None:
    """The id of the READY logged model of ``run_id`` that holds the bundle with ``sha256``."""
    for out in client.get_run(run_id).outputs.model_outputs or []:
        m = client.get_logged_model(out.model_id)
        if m.tags.get(SHA_TAG) == sha256 and str(m.status) in ("READY", "LoggedModelStatus.READY"):
            return m.model_id
    return None


def log_bundle(client, run_id: str, bundle: str | Path, sha256: str) -> str:
    """Log the bundle as the run's MLflow model (once per bundle content); returns the model id."""
    import numpy as np
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    from dsm.core.bundle import load_model

    found = logged_model_of(client, run_id, sha256)
    if found:
        return found
    shape = tuple(load_model(bundle).shape)
    run = client.get_run(run_id)
    lm = client.create_logged_model(experiment_id=run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id,
                                    tags={SHA_TAG: sha256}, model_type="dsm-energy")
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True):  # see pyfunc_entry.py
            local = Path(tmp) / "model"
            mlflow.pyfunc.save_model(
                local, python_model=str(ENTRY), artifacts={BUNDLE_KEY: str(bundle)},
                signature=_signature(shape), input_example=np.full((2, *shape), 0.5, np.float32),
                pip_requirements=_requirements(),
                mlflow_model=Model(artifact_path=lm.artifact_location, run_id=run_id, model_id=lm.model_id,
                                   model_uuid=lm.model_id))
            client.log_model_artifacts(lm.model_id, str(local))
        client.log_outputs(run_id, [LoggedModelOutput(lm.model_id, step=0)])  # the runs table's Models column
        client.finalize_logged_model(lm.model_id, "READY")
    except BaseException:
        client.finalize_logged_model(lm.model_id, "FAILED")
        raise
    return lm.model_id


def register(client, name: str, model_id: str, run_id: str) -> int:
    """A new version of registered model ``name`` (created if needed) for the logged model;
    returns the version number."""
    from mlflow.exceptions import MlflowException

    lm = client.get_logged_model(model_id)
    versions = json.loads(lm.tags.get("mlflow.modelVersions", "[]"))
    done = [v["version"] for v in versions if v.get("name") == name]
    if done:  # a re-run of a finished run: this bundle is registered already
        return int(done[-1])
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # it exists
    # source: the artifact location (``models:/<id>`` would make the registry resolve it with a
    # default client, i.e. the process-wide URI)
    mv = client.create_model_version(name, source=lm.artifact_location, run_id=run_id, model_id=model_id)
    client.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps(
        [*versions, {"name": name, "version": int(mv.version)}])})
    return int(mv.version)


def is_model_uri(ref: str | Path) -> bool:
    return str(ref).startswith("models:/")


def check_model_name(name: str) -> None:
    """A registered model's name must survive ``models:/NAME/VERSION``: ValueError otherwise."""
    if not name or any(c in name for c in "/@:") or name != name.strip():
        raise ValueError(f"--register {name!r}: a registered model's name must be non-empty, without "
                         "'/', '@', ':' or surrounding spaces")


def fetch_bundle(client, uri: str, cache: Path) -> tuple[Path, dict]:
    """The bundle of a registered model version, ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``,
    downloaded once into ``cache/NAME/VERSION``; returns its path and {"name", "version",
    "run_id", "model_id"} for lineage. ValueError, naming the URI, when it does not resolve."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    rest = uri[len("models:/"):]
    name, sep, version = rest.partition("@") if "@" in rest else rest.rpartition("/")
    if not name or not version:
        raise ValueError(f"{uri}: give models:/NAME/VERSION or models:/NAME@ALIAS")
    try:
        mv = (client.get_model_version_by_alias(name, version) if sep == "@"
              else client.get_model_version(name, version))
    except MlflowException as e:
        raise ValueError(f"{uri}: no such registered model version ({e.message.splitlines()[0]})") from None
    folder = cache / name / str(mv.version)
    found = sorted(folder.rglob("*.pt"))  # <folder>/<model dir>/artifacts/model.pt
    if not found:
        download_artifacts(artifact_uri=client.get_model_version_download_uri(name, mv.version),
                           dst_path=str(folder))
        found = sorted(folder.rglob("*.pt"))
    if not found:
        raise ValueError(f"{uri}: the model version holds no dsm bundle (is it a dsm model?)")
    return found[0], {"name": name, "version": str(mv.version), "run_id": mv.run_id,
                    "model_id": getattr(mv, "model_id", None)}
