"""Shared fixtures. Torch threads are capped: the CI machine has 2 cores (docs/design.md section 8)."""

import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


import os  # noqa: E402

import pytest  # noqa: E402

# Ray on a 2-core machine (docs/design.md section 8): no token auth file, fast health checks, no
# preemption watcher, fail-fast worker startup. Set before any Ray process starts.
for _k, _v in {"RAY_AUTH_MODE": "disabled", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
               "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "30",
               "RAY_USAGE_STATS_ENABLED": "0"}.items():
    os.environ.setdefault(_k, _v)


@pytest.fixture(autouse=True)
def no_leaked_tracking_uri():
    """A test that leaves $MLFLOW_TRACKING_URI behind (mlflow.set_tracking_uri writes it) would
    send every later test's runs to its store, failing them far from the cause: fail it here."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    after = os.environ.get("MLFLOW_TRACKING_URI")
    if after != before:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
        pytest.fail(f"the test left MLFLOW_TRACKING_URI={after!r} in the environment (use an MlflowClient)")


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray for the whole session (each start costs 8-10 s); yields its GCS address."""
    import ray

    from dsm.runtime.cluster import pinned_dashboard

    ray.init(num_cpus=2, object_store_memory=256 * 1024**2, log_to_driver=False, **pinned_dashboard())
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def digits_workspace(tmp_path_factory):
    """A session workspace with scikit-learn's digits prepared once (the smoke config's data)."""
    from pathlib import Path

    from dsm.plumbing.config import load_config
    from dsm.train.build import resolve_data
    from dsm.train.config import TrainConfig

    ws = tmp_path_factory.mktemp("train-ws")
    smoke = Path(__file__).resolve().parents[1] / "configs" / "digits-smoke.yaml"
    resolve_data(load_config(TrainConfig, smoke), ws, progress=False)
    return ws


@pytest.fixture(scope="session")
def ray_dashboard_url(ray_cluster) -> str:
    """The session cluster's State API / dashboard URL (for drivers that join it)."""
    import ray._private.worker

    url = ray._private.worker.get_dashboard_url()
    return url if "://" in url else f"http://{url}"


@pytest.fixture
def one_torch_thread():
    """Tests of tiny tensors (toys, exact densities): a second thread only adds contention on a
    busy 2-core machine (up to 15x slower), so they run on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def registered_run(ray_cluster, tmp_path_factory):
    """A short real `dsm train` of digits-smoke (in this process, on the session's Ray) in a
    workspace of its own, registered in MLflow's model registry as `digits`; returns
    (workspace, exported model path)."""
    from dsm.cli import main

    ws = tmp_path_factory.mktemp("registered-ws")
    rc = main(["train", "configs/digits-smoke.yaml", "steps=60", "log_every=20", "checkpoint.every=30",
               "eval.samples=64", "--workspace", str(ws), "--register", "digits"])
    assert rc == 0
    (export,) = (ws / "runs").glob("*/model.pt")
    return ws, export


# The object-storage tests' S3 server (tests/servers.py). Its address and credentials are in the
# environment from the start, the standard AWS way, so that every Ray worker started later
# inherits them, as workers on a real cluster get theirs from the nodes' environment.
import tempfile as _tempfile  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

from tests import servers as _servers  # noqa: E402

_S3_PORT = _servers.free_port()
os.environ.update(_servers.s3_env(_S3_PORT, _Path(_tempfile.mkdtemp(prefix="dsm-aws-"))))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server on 127.0.0.1, one per session; yields its endpoint URL."""
    server = _servers.S3Server(_S3_PORT, tmp_path_factory.mktemp("s3") / "moto.log")
    server.start()
    try:
        yield os.environ["AWS_ENDPOINT_URL"]
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_server):
    """A new, empty bucket: ``s3://dsm-<random>``."""
    return _servers.make_bucket()
