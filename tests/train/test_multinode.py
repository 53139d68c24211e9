"""Multi-node training on a simulated cluster (ray.cluster_utils.Cluster), in a subprocess.

Why a subprocess: the session fixture ``ray_cluster`` may already have called ray.init in
the pytest process, and a process joins one cluster; the driver (tests/train/multinode_driver.py)
owns its Cluster, with RAY_TMPDIR set to a temp dir of its own so that its "current cluster"
address file is not /tmp/ray's (where anyone's ``ray.init()`` would find it), and its
processes are killed by that temp dir afterwards. One driver run (one cluster, module-scoped)
serves both tests: it trains into the bucket first, then loses a node (the only check that
changes the cluster); each check reports into its own part of the result.
"""

import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dsm.core.bundle import load_model
from dsm.runtime.tracking import tracking_uri
from tests.procs import run_cluster_driver

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def multinode(digits_workspace, s3_server, tmp_path_factory) -> tuple[dict, subprocess.CompletedProcess, dict]:
    """The driver's (result, finished process), and the bucket check's {workspace, bucket}."""
    from dsm.plumbing.config import load_config
    from dsm.train.build import resolve_data
    from dsm.train.config import TrainConfig
    from tests import servers

    bucket = servers.make_bucket()
    smoke = resolve_data(load_config(TrainConfig, REPO / "configs" / "digits-smoke.yaml"), digits_workspace,
                         progress=False)
    servers.upload(Path(smoke.data.path).parent, f"{bucket}/digits")
    s3_ws, lose_ws = tmp_path_factory.mktemp("multinode-s3") / "ws", tmp_path_factory.mktemp("multinode") / "ws"
    out, proc = run_cluster_driver(REPO / "tests" / "train" / "multinode_driver.py", str(s3_ws), bucket, str(lose_ws))
    return out, proc, {"ws": lose_ws, "s3_ws": s3_ws, "bucket": bucket}


@pytest.mark.slow
def test_two_nodes_lose_one_and_finish_from_the_checkpoint(multinode):
    res, proc, where = multinode
    out, ws = res["lose"], where["ws"]

    assert out["nodes_alive"] == 3
    # Node-local storage on a multi-node cluster is refused before the trainer is built.
    assert out["refused"] and "DSM_SHARED_STORAGE=1" in out["refused"] and "3 alive nodes" in out["refused"]
    assert out["checkpoint_before_removal"], out
    assert out["nodes_after_removal"] == 2
    assert out["finished"] and "error" not in out, out
    # The worker group was rebuilt on the new node and restored the checkpoint (its line reaches
    # the driver's stdout: the Cluster's ray.init logs to the driver).
    assert "dsm train: resumed multinode at step" in proc.stdout, proc.stdout[-3000:]

    run_dir = Path(out["run_dir"])
    assert out["export"] == str(run_dir / "model.pt")
    assert load_model(run_dir / "model.pt").meta["step"] == 120
    client = MlflowClient(tracking_uri(ws))
    exp = client.get_experiment_by_name("dsm-train")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`dsm.run_name` = 'multinode'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")]
    assert steps == list(range(20, 121, 20)), steps  # complete after the restart, no step twice


@pytest.mark.slow
def test_two_nodes_train_from_a_bucket_into_it(multinode):
    """docs/cluster.md's recipe on a 2-node cluster: data, checkpoints, exports and MLflow
    artifacts in one bucket, no shared folder declared."""
    from dsm.plumbing.store import Location

    res, _, where = multinode
    out, ws, bucket = res["s3"], where["s3_ws"], where["bucket"]
    assert out["nodes_alive"] == 3 and out["outputs"] == f"{bucket}/runs/multinode-s3", out
    remote = Location.of(out["outputs"])
    assert {"model.pt", "config.yaml"} <= set(remote.listing())
    assert sum(f.name.startswith("checkpoint_") for f in remote.subfolders()) == 2
    assert load_model(Path(out["export"])).meta["step"] == 40
    client = MlflowClient(tracking_uri(ws))
    run = client.search_runs([client.get_experiment_by_name("dsm-train").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith(f"{bucket}/mlflow/")
    assert "model.pt" in Location.of(f"{run.info.artifact_uri}/model").listing()
