"""Run by tests/train/test_multinode.py in a subprocess of its own (it must own its Ray: the
pytest process may already hold the session's ray.init, and one process joins one cluster).

A simulated 3-node cluster (``ray.cluster_utils.Cluster``): a 0-CPU head that hosts the driver
and Ray Train's controller, and two 1-CPU nodes, one training worker each. One cluster serves
both checks, one after the other (a cluster start is 10-20 s on 2 cores):

1. with a bucket (:func:`from_bucket`): trains from and into it, no shared folder declared;
2. (:func:`lose_a_node`) ``dsm train`` refuses node-local storage there, then trains with the
   storage declared shared, removes a worker node after the first registered checkpoint, adds a
   fresh node, and lets the run finish. Last: it is the one that changes the cluster.

Each check's failure is reported in its own part of the result, so that the other's test still
judges its own. Prints one JSON line ``RESULT {"s3": {...}, "lose": {...}}``.
Usage: multinode_driver.py S3_WORKSPACE BUCKET LOSE_WORKSPACE
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def lose_a_node(cluster, nodes: list, ws: Path) -> dict:
    from dsm.plumbing.config import ConfigError, load_config
    from dsm.runtime.storage import alive_nodes
    from dsm.train.build import resolve_data
    from dsm.train.config import TrainConfig
    from dsm.train.run import plan, train

    out: dict = {"nodes_alive": alive_nodes()}
    # 120 steps (400 before): the node goes about a second after the checkpoint at step 40 is
    # registered, and 80 steps (10-15 s on 2 cores) are left: the loss is mid-run either way.
    overrides = ["steps=120", "checkpoint.every=40", "log_every=20", "eval.enabled=false",
                 "scaling.workers=2", "scaling.cpus_per_worker=1", "scaling.max_failures=4", "name=multinode"]
    cfg = resolve_data(load_config(TrainConfig, REPO / "configs" / "digits-smoke.yaml", overrides), ws,
                       progress=False)
    p = plan(cfg, ws, progress=False)

    os.environ.pop("DSM_SHARED_STORAGE", None)
    try:
        train(p, log_to_driver=False)
        out["refused"] = None
    except ConfigError as e:
        out["refused"] = str(e)

    os.environ["DSM_SHARED_STORAGE"] = "1"  # one machine: every "node" sees the same /tmp
    box: dict = {}

    def run() -> None:
        try:
            box["export"] = str(train(p, log_to_driver=False))
        except BaseException as e:  # noqa: BLE001 - reported to the test
            box["error"] = f"{type(e).__name__}: {e}"

    th = threading.Thread(target=run, daemon=True)
    th.start()
    snapshot = p.run_dir / "checkpoint_manager_snapshot.json"
    deadline = time.time() + 300
    while th.is_alive() and time.time() < deadline and \
            "checkpoint_" not in (snapshot.read_text() if snapshot.is_file() else ""):
        time.sleep(0.1)
    out["checkpoint_before_removal"] = snapshot.is_file() and th.is_alive()
    cluster.remove_node(nodes[0])
    out["nodes_after_removal"] = alive_nodes()
    cluster.add_node(num_cpus=1, object_store_memory=100 * 1024**2)
    th.join(timeout=420)
    out["finished"] = not th.is_alive()
    out.update(box)
    out["run_dir"] = str(p.run_dir)
    return out


def from_bucket(ws: Path, bucket: str) -> dict:
    """Two 1-CPU worker nodes train from ``bucket/digits`` into ``bucket/runs``, with MLflow's
    artifacts in ``bucket/mlflow`` and no shared folder declared: the bucket is the shared storage."""
    from dsm.plumbing.config import load_config
    from dsm.runtime.storage import alive_nodes
    from dsm.train.build import resolve_data
    from dsm.train.config import TrainConfig
    from dsm.train.run import plan, train

    os.environ.pop("DSM_SHARED_STORAGE", None)
    os.environ["DSM_ARTIFACT_ROOT"] = f"{bucket}/mlflow"  # read by the driver, which opens the run
    out: dict = {}
    try:
        out["nodes_alive"] = alive_nodes()
        overrides = ["steps=40", "checkpoint.every=20", "log_every=20", "eval.samples=64", "scaling.workers=2",
                     "scaling.cpus_per_worker=1", "name=multinode-s3", "data.dataset=null",
                     f"data.path={bucket}/digits/train", f"data.eval_path={bucket}/digits/test"]
        cfg = resolve_data(load_config(TrainConfig, REPO / "configs" / "digits-smoke.yaml", overrides), ws,
                           progress=False)
        p = plan(cfg, ws, progress=False, storage=f"{bucket}/runs")
        out["export"] = str(train(p, log_to_driver=False))
        out["outputs"] = p.out.url
    finally:
        os.environ.pop("DSM_ARTIFACT_ROOT", None)
    return out


def main(s3_ws: Path, bucket: str, lose_ws: Path) -> dict:
    from tests.procs import simulated_cluster

    result: dict = {}
    with simulated_cluster(head_cpus=0, worker_nodes=2) as (cluster, nodes):
        checks = (("s3", lambda: from_bucket(s3_ws, bucket)), ("lose", lambda: lose_a_node(cluster, nodes, lose_ws)))
        for key, check in checks:
            try:
                result[key] = check()
            except BaseException as e:  # noqa: BLE001 - reported to that check's test
                result[key] = {"error": f"{type(e).__name__}: {e}"}
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    result = main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
    print("RESULT " + json.dumps(result), flush=True)
