"""Multi-node training on a simulated cluster (ray.cluster_utils.Cluster), in a subprocess.

Why a subprocess: the session fixture ``ray_cluster`` may already have called ray.init in
the pytest process, and a process joins one cluster; the driver (tests/train/multinode_driver.py)
owns its Cluster, with RAY_TMPDIR set to a temp dir of its own so that its "current cluster"
address file is not /tmp/ray's (where anyone's ``ray.init()`` would find it), and its
processes are killed by that temp dir afterwards.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dsm.bundle import load_model
from dsm.runtime.tracking import tracking_uri
from tests.procs import kill_leftovers, short_tmp

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_nodes_lose_one_and_finish_from_the_checkpoint(tmp_path):
    tmp = short_tmp("dsmc")
    ws = tmp_path / "ws"
    env = {**os.environ, "RAY_TMPDIR": str(tmp), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", "DSM_WORKSPACE", "DSM_SHARED_STORAGE"):
        env.pop(k, None)
    try:
        proc = subprocess.run([sys.executable, str(REPO / "tests" / "train" / "multinode_driver.py"), str(ws)],
                              check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    finally:
        kill_leftovers(str(tmp))
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = json.loads(lines[-1][len("RESULT "):])

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
    assert load_model(run_dir / "model.pt").meta["step"] == 400
    client = MlflowClient(tracking_uri(ws))
    exp = client.get_experiment_by_name("dsm-train")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`dsm.run_name` = 'multinode'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")]
    assert steps == list(range(20, 401, 20)), steps  # complete after the restart, no step twice
