"""GPU jobs against a real multi-node Ray whose nodes declare logical GPUs (no CUDA behind them),
driven from a process without CUDA (tests/runtime/gpu_cluster_driver.py says what it runs).
It needs its own cluster: a head of 0 CPUs, nodes added and removed, an autoscaler config
written into the cluster's GCS; none of that may touch the session's Ray."""

from pathlib import Path

import pytest
import torch

from tests.procs import run_cluster_driver

DRIVER = Path(__file__).with_name("gpu_cluster_driver.py")


@pytest.fixture(scope="module")
def gpu_cluster_run(tmp_path_factory):
    assert not torch.cuda.is_available(), "these checks are about a driver and nodes without CUDA"
    result, _ = run_cluster_driver(DRIVER, str(tmp_path_factory.mktemp("gpucluster")), timeout=900)
    return result


@pytest.mark.slow
def test_train_reaches_the_gpu_node_and_names_its_missing_cuda(gpu_cluster_run):
    r = gpu_cluster_run["train_1gpu"]
    assert r["rc"] == 1, r["stderr"]
    assert f"scaling.gpu: node {gpu_cluster_run['gpu_node_ip']} gave a GPU" in r["last"], r["stderr"]
    assert "CUDA_VISIBLE_DEVICES='0'" in r["last"] and "torch.cuda.is_available()=False" in r["last"]
    assert "Traceback" not in r["stderr"]


@pytest.mark.slow
def test_more_gpu_workers_than_gpus_is_one_line_not_a_hang(gpu_cluster_run):
    r = gpu_cluster_run["train_2gpu"]
    assert r["rc"] == 2, r["stderr"]
    assert "need 2 GPUs, but the cluster has 1 GPU and no autoscaler" in r["last"], r["last"]
    assert r["seconds"] < 120


@pytest.mark.slow
def test_no_gpu_at_all_is_one_line_naming_the_shortage(gpu_cluster_run):
    r = gpu_cluster_run["train_no_gpu"]
    assert r["rc"] == 2, r["stderr"]
    assert "need 1 GPU, but the cluster has 0 GPUs and no autoscaler" in r["last"], r["last"]


@pytest.mark.slow
def test_score_on_one_gpu_with_two_actors_does_not_hang(gpu_cluster_run):
    r = gpu_cluster_run["score"]
    assert r["rc"] == 1 and "torch.cuda.is_available()=False" in r["last"], r["stderr"]
    assert gpu_cluster_run["pool"] == {"min": 1, "max": 1}  # cut to the one GPU, not a pool waiting for two


@pytest.mark.slow
def test_a_growing_cluster_is_counted_at_its_ceiling_and_its_wait_bounded(gpu_cluster_run):
    g = gpu_cluster_run["growing"]
    assert g["capacity"]["grows"] and g["capacity"]["ceiling"]["GPU"] == 2 and g["capacity"]["now"].get("GPU", 0) == 0
    assert g["gpu_trial_demand"] == {"CPU": 1.0, "GPU": 1.0}
    assert g["gpu_sweep_concurrency"] == 2  # the autoscaler's two GPU nodes, though none is up
    assert len(g["said"]) == 1 and "waiting up to 3 s (scaling.resource_timeout_s)" in g["said"][0], g["said"]
    assert g["timeout"].startswith("scaling.resource_timeout_s: after 3 s the cluster had still not provided 1 "
                                   "worker(s) x 1 CPU + 1 GPU"), g["timeout"]
    assert 3 <= g["waited_s"] < 30


@pytest.mark.slow
def test_tune_on_a_zero_cpu_head_waits_for_a_node_then_runs(gpu_cluster_run):
    t = gpu_cluster_run["tune"]
    assert t["waited"], t["stderr_tail"]
    assert t["waiting_lines"] == 1, t["stderr_tail"]  # said once
    assert t["rc"] == 0, t["stdout_tail"] + t["stderr_tail"]
    assert "1 trial(s)" in t["stdout_tail"] and "completed" in t["stdout_tail"], t["stdout_tail"]


@pytest.mark.slow
def test_normalize_on_a_gpu_runs_in_a_task_on_the_gpu_node(gpu_cluster_run):
    r = gpu_cluster_run["normalize"]
    assert r["rc"] == 1, r["stderr"]
    assert f"node {gpu_cluster_run['gpu_node_ip']} gave a GPU" in r["last"] and "is_available()=False" in r["last"]
