"""What a job asks of the cluster (dsm.runtime.resources): the arithmetic on hand-made
capacities, the checks on the session's real local Ray, and the refusals before a local Ray
starts. The multi-node and growing-cluster cases are in test_gpu_cluster.py."""

import pytest

from dsm.runtime.resources import (
    GIB,
    Capacity,
    ClusterShortage,
    Demand,
    capacity,
    cuda_problem,
    how_many_fit,
    secure,
    shortage,
)

FIXED_1GPU = Capacity(now={"CPU": 8.0, "GPU": 1.0, "memory": 32 * GIB}, ceiling={"CPU": 8.0, "GPU": 1.0,
                                                                                  "memory": 32 * GIB},
                      node_max={"CPU": 8.0, "GPU": 1.0, "memory": 32 * GIB}, grows=False)
GROWING = Capacity(now={"CPU": 0.0, "memory": 4 * GIB}, ceiling={"CPU": 64.0, "GPU": 8.0, "memory": 4 * GIB},
                   node_max={"CPU": 32.0, "GPU": 4.0, "memory": 4 * GIB}, grows=True)


def test_bundles_drop_zero_amounts_and_empty_bundles():
    d = Demand({"CPU": 0.5, "GPU": 0.0}, 3, unit="actor", at_least=1, extra=[{"CPU": 0.0}])
    assert d.bundles() == [{"CPU": 0.5}]  # one needed to start; the empty trial-function bundle left out
    assert d.bundles(3) == [{"CPU": 0.5}] * 3
    assert not d.gpu and Demand({"GPU": 1}, 1).gpu


def test_how_many_fit_counts_totals_less_the_extra_bundles():
    d = Demand({"CPU": 2.0, "GPU": 1.0}, 8, extra=[{"CPU": 1.0}])
    assert how_many_fit(d, GROWING.ceiling) == 8
    assert how_many_fit(d, GROWING.now) == 0
    assert how_many_fit(d, FIXED_1GPU.ceiling) == 1


def test_a_fixed_cluster_short_of_gpus_is_named():
    why = shortage(Demand({"CPU": 1.0, "GPU": 1.0}, 2), FIXED_1GPU)
    assert why == ("2 worker(s) x 1 CPU + 1 GPU need 2 GPUs, but the cluster has 1 GPU and no autoscaler that "
                   "could add more")


def test_a_growing_cluster_is_judged_by_its_ceiling():
    assert shortage(Demand({"CPU": 1.0, "GPU": 1.0}, 8), GROWING) is None  # 0 CPUs now (a bare head): fine
    why = shortage(Demand({"CPU": 1.0, "GPU": 1.0}, 9), GROWING)
    assert why == ("9 worker(s) x 1 CPU + 1 GPU need 9 GPUs, but the cluster has 0 GPUs and its autoscaler can "
                   "reach 8 GPUs")


def test_a_bundle_larger_than_any_node_is_named_with_the_largest():
    why = shortage(Demand({"CPU": 1.0, "GPU": 8.0}, 1), GROWING)
    assert why == "one worker needs 8 GPUs, more than any node has or its autoscaler can add (the largest: 4 GPUs)"
    why = shortage(Demand({"CPU": 1.0, "memory": 48 * GIB}, 1), FIXED_1GPU)
    assert why == ("1 worker(s) x 1 CPU + 48 GiB memory need 48 GiB memory, but the cluster has 32 GiB memory and "
                   "no autoscaler that could add more")


def test_a_pool_needs_only_its_first_actor():
    pool = Demand({"CPU": 0.5, "GPU": 1.0}, 4, unit="actor", at_least=1)
    assert shortage(pool, FIXED_1GPU) is None
    assert how_many_fit(pool, FIXED_1GPU.ceiling) == 1


def test_cuda_problem_names_node_and_what_it_saw():
    seen = {"node": "10.0.0.7", "gpu_ids": ["0"], "visible": "0", "available": False, "count": 0,
            "torch": "2.13.0+cpu", "built_with_cuda": None}
    assert cuda_problem(seen) == ("node 10.0.0.7 gave a GPU (Ray GPU ids ['0']) but torch there sees no CUDA: "
                                  "CUDA_VISIBLE_DEVICES='0', torch.cuda.is_available()=False (torch 2.13.0+cpu, "
                                  "built without CUDA)")
    assert cuda_problem({**seen, "available": True, "count": 1, "built_with_cuda": "12.8"}) is None


def test_secure_on_the_local_ray(ray_cluster):
    cap = capacity()
    assert not cap.grows and cap.now["CPU"] == 2 and cap.now.get("GPU", 0) == 0
    said = []
    assert secure("score", Demand({"CPU": 0.5}, 8, unit="actor", at_least=1), 5, said.append) == 4
    assert said == []  # placed at once: nothing to announce
    with pytest.raises(ClusterShortage, match=r"1 worker\(s\) x 1 CPU \+ 1 GPU need 1 GPU, but the cluster has 0 GPUs"):
        secure("train", Demand({"CPU": 1.0, "GPU": 1.0}, 1), 5, said.append)
    assert said == []


@pytest.mark.slow  # a fresh interpreter importing dsm's CLI (about 5 s): outside the quick loop
def test_gpu_without_a_cluster_or_cuda_is_refused_before_ray(tmp_path):
    """Its own process: the pytest process may hold the session's Ray, which a command reuses."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    p = subprocess.run([sys.executable, "-m", "dsm.cli", "train", "configs/digits-smoke.yaml", "--gpu",
                        "--workspace", str(tmp_path), "steps=2"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines()[-1] == (
        "dsm train: scaling.gpu: 2 GPU(s) asked, but this machine has 0 usable CUDA device(s) and no --address "
        "was given; drop --gpu, or give --address of a GPU cluster")
    assert "Started a local Ray" not in p.stderr and not (tmp_path / "mlflow.db").exists()
