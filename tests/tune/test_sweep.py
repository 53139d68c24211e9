"""Real sweeps: Ray Tune over Ray Train on the session's local Ray, tracked in a real MLflow."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dsm.cli import main as cli
from dsm.plumbing.config import load_config
from dsm.train.config import TrainConfig
from dsm.tune.trial import STARTS_TAG
from tests.tune.conftest import REPO


def _runs(ws: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("dsm-tune")
    return client, client.search_runs([exp.experiment_id], max_results=100)


@pytest.mark.slow
def test_smoke_sweep_stops_the_bad_trial_and_logs_parent_and_children(ray_cluster, digits_workspace, capsys):
    ws = digits_workspace  # the digits are prepared there already
    assert cli(["tune", str(REPO / "tune" / "smoke.yaml"), "--workspace", str(ws)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    best_path = Path(out[-1])
    assert best_path.name == "best_config.yaml"
    best = load_config(TrainConfig, best_path)  # a valid training config, ready for dsm train
    rows = list(csv.DictReader(open(best_path.parent / "results.csv")))
    assert len(rows) == 3
    by_lr = {float(r["optim.lr"]): r for r in rows}
    bad = by_lr[1e-9]
    # ASHA (trials one at a time, so no timing dependence) stops the absurd lr at its first rung
    assert bad["status"] == "stopped_early" and int(bad["step"]) == 40, bad
    done = [r for r in rows if r["status"] == "completed"]
    assert done and all(int(r["step"]) == 80 for r in done)
    assert best.optim.lr == float(min(done, key=lambda r: float(r["eval/nll_bpd"]))["optim.lr"]) > 1e-6
    assert (best_path.parent / "metric_vs_params.png").stat().st_size > 5000

    client, runs = _runs(ws)
    parents = [r for r in runs if r.data.tags.get("dsm.kind") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials/stopped_early"] >= 1
    assert parent.data.metrics["best/eval/nll_bpd"] == pytest.approx(min(float(r["eval/nll_bpd"]) for r in done))
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "results.csv", "metric_vs_params.png", "best_config.yaml"}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3
    for c in children:
        assert "optim.lr" in c.data.params and "eval/nll_bpd" in c.data.metrics
        status = c.data.tags["dsm.tune_status"]
        assert c.info.status == ("FINISHED" if status == "completed" else "KILLED")


def _trial_status(folder: Path) -> dict[str, str]:
    """Tune's saved experiment state: trial name -> status (what a restore would see)."""
    out = {}
    for f in folder.glob("experiment_state-*.json"):
        try:
            data = json.loads(f.read_text())
        except (json.JSONDecodeError, OSError):
            continue  # being written
        for entry in data["trial_data"]:
            state = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
            out[state.get("custom_trial_name") or state["trial_id"]] = state["status"]
    return out


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(ray_cluster, ray_dashboard_url,
                                                                     digits_workspace, write_spec):
    ws = digits_workspace
    spec = write_spec({"name": "resume-test", "overrides": {"steps": 60, "log_every": 20,
                                                           "checkpoint": {"every": 20, "num_to_keep": 1},
                                                           "eval": {"samples": 64, "psnrs": [10], "grid": False}},
                       "space": {"optim.lr": {"grid": [2e-3, 1e-3, 3e-3]}}, "search": "grid",
                       "scheduler": {"kind": "fifo"},
                       "resources": {"workers": 2, "cpus_per_worker": 1.0}})
    folder = ws / "sweeps" / "resume-test"
    env = {**os.environ, "RAY_API_SERVER_ADDRESS": ray_dashboard_url}
    proc = subprocess.Popen([sys.executable, "-m", "dsm.cli", "tune", str(spec), "--workspace", str(ws),
                             "--address", ray_cluster], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 420
    try:
        while time.time() < deadline:
            st = _trial_status(folder)
            second = folder / "runs" / "resume-test-t001" / "checkpoint_manager_snapshot.json"
            if st.get("resume-test-t000") == "TERMINATED" and second.is_file():
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("the first trial did not finish in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies as in a crash; its trials die with it
        proc.wait()
    assert not (folder / "runs" / "resume-test-t001" / "model.pt").exists()

    assert cli(["tune", str(spec), "--workspace", str(ws), "--address", ray_cluster]) == 0
    # The restored sweep starts its unfinished trials together; the training slots (one fits
    # on 2 CPUs) make them take turns instead of starving each other's workers.
    client, runs = _runs(ws)
    starts = {r.data.tags["dsm.run_name"]: int(r.data.tags[STARTS_TAG]) for r in runs if STARTS_TAG in r.data.tags}
    assert starts["resume-test-t000"] == 1 and starts["resume-test-t001"] == 2, starts  # finished one kept
    rows = list(csv.DictReader(open(folder / "results" / "results.csv")))
    assert [r["status"] for r in rows] == ["completed"] * 3
    (child,) = [r for r in runs if r.data.tags.get("dsm.run_name") == "resume-test-t001"]
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
    assert steps == [20, 40, 60]  # resumed from its checkpoint: each step logged exactly once
    assert yaml.safe_load((folder / "results" / "best_config.yaml").read_text())["steps"] == 60
