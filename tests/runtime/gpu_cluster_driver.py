"""Run by tests/runtime/test_gpu_cluster.py in a subprocess of its own (it must own its Ray: the
pytest process may hold the session's ray.init, and one process joins one cluster).

A real multi-node Ray on 127.0.0.1 (``ray.cluster_utils.Cluster``: a head of 0 CPUs, as the
shipped cluster specs have, and nodes that declare *logical* GPUs, with no CUDA behind them),
driven the way a user with a GPU cluster would from a machine without CUDA:

1. a node with 1 logical GPU: ``dsm train --address A --gpu`` reaches that node, whose
   missing CUDA is one line naming it; 2 GPU workers on 1 GPU: one line naming the shortage;
   ``dsm score --gpu --actors 2``: does not hang, and its pool is cut to the one GPU;
   ``dsm normalize --gpu``: its GPU task reaches that node too;
2. a CPU node and no GPU: ``dsm train --gpu`` names the GPU shortage;
3. an autoscaler config published (the node groups Ray reads, as a KubeRay or ``ray up``
   autoscaler publishes it) but no autoscaler running: sweeps count its ceiling; a GPU demand
   waits, says so once, then fails naming what never came; ``dsm tune`` on the 0-CPU head is
   planned, waits for CPUs, and runs once a node joins (as an autoscaler would add it).

Prints ``RESULT <json>`` last. Usage: gpu_cluster_driver.py WORKDIR
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DSM = [sys.executable, "-m", "dsm.cli"]


def start_cluster():
    from ray.cluster_utils import Cluster

    from tests.procs import free_ports

    dash, agent = free_ports(2)
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dash}"  # inherited by the dsm commands
    return Cluster(initialize_head=True, connect=False,
                   head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": True,
                                   "dashboard_host": "127.0.0.1", "dashboard_port": dash,
                                   "dashboard_agent_listen_port": agent, "object_store_memory": 100 * 1024**2})


def add_node(cluster, cpus: int, gpus: int):
    node = cluster.add_node(num_cpus=cpus, num_gpus=gpus, object_store_memory=100 * 1024**2)
    cluster.wait_for_nodes()
    return node


def dsm(*args: str, timeout: float = 300) -> dict:
    """A dsm command as its own process (a user's shell); its status, last stderr line and time."""
    t0 = time.time()
    env = {**os.environ, "DSM_SHARED_STORAGE": "1"}  # one machine: every node sees the same folders
    p = subprocess.run([*DSM, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    return {"rc": p.returncode, "last": lines[-1] if lines else "", "stderr": p.stderr[-3000:],
            "seconds": time.time() - t0}


def vector_model(work: Path) -> tuple[Path, Path]:
    """A normalized (untrained) MLP energy on 4-vectors, and 10 vectors to score."""
    import numpy as np
    import torch

    from dsm.core.bundle import save_bundle
    from dsm.plumbing.config import load_config
    from dsm.train import build
    from dsm.train.config import TrainConfig

    x = work / "x.npy"
    np.save(x, np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32))
    cfg = load_config(TrainConfig, REPO / "configs" / "vectors.yaml", [f"data.path={x}", f"data.eval_path={x}"])
    torch.manual_seed(0)
    model = work / "model.pt"
    save_bundle(model, build.build_model(cfg, build.DataShape((4,), False)), cfg, (4,), False,
                normalization={"value": 0.0})
    return model, x


def one_gpu_node(cluster, work: Path) -> dict:
    out: dict = {}
    node = add_node(cluster, cpus=2, gpus=1)
    out["gpu_node_ip"] = node.node_ip_address
    train = ["train", str(REPO / "configs" / "digits-smoke.yaml"), "--address", cluster.address, "--gpu",
             "--workspace", str(work / "ws"), "steps=5"]
    out["train_1gpu"] = dsm(*train, "--workers", "1")
    out["train_2gpu"] = dsm(*train, "--workers", "2")
    model, x = vector_model(work)
    out["score"] = dsm("score", str(model), "--data", str(x), "--out", str(work / "scores"), "--gpu", "--actors",
                       "2", "--t-grid", "", "--consistency-samples", "0", "--address", cluster.address,
                       "--workspace", str(work / "ws"))
    out["pool"] = in_driver(cluster.address, pool_size)
    out["normalize"] = dsm("normalize", str(model), "--data", str(x), "--gpu", "--address", cluster.address,
                           "--workspace", str(work / "ws"))
    cluster.remove_node(node)
    node = add_node(cluster, cpus=2, gpus=0)
    out["train_no_gpu"] = dsm(*train, "--workers", "1")
    cluster.remove_node(node)
    return out


def in_driver(address: str, fn):
    """``fn()`` with this process joined to the cluster (then left again)."""
    import ray

    ray.init(address=address, log_to_driver=False)
    try:
        return fn()
    finally:
        ray.shutdown()


def pool_size() -> dict:
    from dsm.scoring.job import actor_demand, actor_pool

    pool = actor_pool(actor_demand(2, True, pending=5))
    return {"min": pool.min_size, "max": pool.max_size}


def publish_autoscaler_groups() -> None:
    """The cluster config an autoscaler publishes in the GCS: a group of 2-CPU, 1-GPU nodes, up to 2."""
    from ray._raylet import GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, GCS_AUTOSCALER_STATE_NAMESPACE
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_put

    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add()
    group.name, group.min_count, group.max_count = "gpu", 0, 2
    group.resources.update({"CPU": 2, "GPU": 1})
    _internal_kv_put(GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, config.SerializeToString(),
                     namespace=GCS_AUTOSCALER_STATE_NAMESPACE)


def growing(work: Path) -> dict:
    """Checks on the head alone, with the autoscaler's config published."""
    import dataclasses

    from dsm.runtime.resources import Demand, ResourceTimeout, capacity, secure
    from dsm.tune.plan import make_plan
    from dsm.tune.run import concurrency, trial_demand

    publish_autoscaler_groups()
    out: dict = {"capacity": dataclasses.asdict(capacity())}
    plan = make_plan(REPO / "tune" / "smoke.yaml", ["resources.gpu=true", "resources.workers=1",
                                                    "max_concurrent=0"], work / "ws", prepare_data=False)
    out["gpu_sweep_concurrency"] = concurrency(plan)
    out["gpu_trial_demand"] = trial_demand(plan).per
    said: list[str] = []
    t0 = time.time()
    try:
        secure("train", Demand({"CPU": 1, "GPU": 1}, 1), timeout_s=3, say=said.append)
        out["timeout"] = None
    except ResourceTimeout as e:
        out["timeout"] = str(e)
    out["said"], out["waited_s"] = said, time.time() - t0
    return out


def tune_waits_for_a_node(cluster, work: Path) -> dict:
    """``dsm tune`` of one 1-worker trial on the 0-CPU head: it must wait (saying so), and run
    once a 2-CPU node joins."""
    spec = work / "one.yaml"
    spec.write_text(f"base: {REPO / 'configs' / 'digits-smoke.yaml'}\n"
                    "overrides: {steps: 20, log_every: 10, checkpoint: {every: 10}, scaling: {resource_timeout_s: 240},"
                    " eval: {samples: 64, psnrs: [20], grid: false, consistency: false}}\n"
                    "space: {optim.lr: {grid: [1.0e-3]}}\nsearch: grid\nscheduler: {kind: fifo}\n"
                    "resources: {workers: 1, cpus_per_worker: 1.0}\n")
    env = {**os.environ, "DSM_SHARED_STORAGE": "1"}
    proc = subprocess.Popen([*DSM, "tune", str(spec), "--address", cluster.address, "--workspace", str(work / "ws")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    err: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            err.append(line)
            if "waiting up to" in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    waited = seen.wait(180)
    if waited:
        time.sleep(2)  # it keeps waiting: nothing has joined yet
        add_node(cluster, cpus=2, gpus=0)
    stdout, _ = proc.communicate(timeout=400)
    reader.join(10)
    text = "".join(err)
    return {"waited": waited, "rc": proc.returncode, "waiting_lines": text.count("waiting up to"),
            "stdout_tail": stdout[-1500:], "stderr_tail": text[-3000:]}


def main(work: Path) -> dict:
    cluster = start_cluster()
    try:
        out = one_gpu_node(cluster, work)
        out["growing"] = in_driver(cluster.address, lambda: growing(work))
        out["tune"] = tune_waits_for_a_node(cluster, work)
        return out
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    print("RESULT " + json.dumps(main(Path(sys.argv[1])), default=str), flush=True)
