"""`dsm score` as a Ray Data job on the session's real local Ray, writing real parquet."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dsm.consistency import Options as ConsistencyOptions
from dsm.bundle import save_bundle
from dsm.cli import main
from dsm.config import load_config
from dsm.scoring.columns import ScoreSpec
from dsm.scoring.job import DEFAULT_T_RANGE, read_scores, score
from dsm.train import build
from dsm.train.config import TrainConfig


@pytest.fixture
def one_thread():
    """The driver-side consistency checks run tiny ops: a second thread only adds contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_exact_gaussian_through_the_job(ray_cluster, gaussian, gaussian_ref, gaussian_npy, tmp_path, one_thread):
    spec = ScoreSpec(t_grid=(0.01, 1.0), n_noise=4, batch_size=64)
    summary = score(gaussian_ref, gaussian_npy, tmp_path / "a", spec, actors=2, consistency=ConsistencyOptions())
    # the self-consistency of an exact density: all in bounds, in the summary and in scores.json
    c = summary["consistency"]
    assert c["n"] == 256 and (c["t_min"], c["t_max"]) == pytest.approx(DEFAULT_T_RANGE) and c["warnings"] == []
    assert c["metrics"]["consistency/log_z_spread_nats"] < 0.01
    assert json.loads((tmp_path / "a" / "scores.json").read_text())["summary"]["consistency"] == c
    table = read_scores(tmp_path / "a")
    assert table.num_rows == 2500 and summary["n"] == 2500
    assert table.column("key").to_pylist()[:2] == ["000000", "000001"]  # .npy keys: zero-padded row index
    x = torch.from_numpy(np.load(gaussian_npy))
    np.testing.assert_allclose(table.column("logp_nats").to_numpy(), gaussian.log_prob(x).double().numpy(), rtol=1e-6)
    for i, t in enumerate(spec.t_grid):
        truth = gaussian.mean_d_eff(t)
        for est in ("deff_denoising", "deff_time"):
            v = np.asarray(table.column(est).to_pylist())[:, i]
            assert abs(v.mean() - truth) < 4 * v.std() / np.sqrt(len(v)), (est, t, v.mean(), truth)
    assert json.loads(pq.read_schema(next((tmp_path / "a" / "parts").glob("*.parquet"))).metadata[b"dsm.t_grid"]) \
        == [0.01, 1.0]

    # One actor and another batch size: the same numbers, row for row.
    score(gaussian_ref, gaussian_npy, tmp_path / "b", ScoreSpec(t_grid=(0.01, 1.0), n_noise=4, batch_size=500), actors=1,
          consistency=None)
    other = read_scores(tmp_path / "b")
    assert other.column("key").to_pylist() == table.column("key").to_pylist()
    for c in table.column_names[1:]:
        np.testing.assert_allclose(np.asarray(other.column(c).to_pylist(), dtype=float),
                                   np.asarray(table.column(c).to_pylist(), dtype=float), rtol=1e-6, err_msg=c)


def _vector_bundle(tmp_path, d=4, normalized=True, width=64):
    x = tmp_path / "ref.npy"
    np.save(x, np.zeros((2, d), np.float32))
    cfg = load_config(TrainConfig, "configs/vectors.yaml",
                      [f"data.path={x}", f"data.eval_path={x}", f"model.mlp.width={width}"])
    torch.manual_seed(0)
    model = build.build_model(cfg, build.DataShape((d,), False))
    path = tmp_path / "model.pt"
    save_bundle(path, model, cfg, (d,), False, normalization={"value": 0.0} if normalized else None)
    return path


def test_score_warns_about_an_inconsistent_model(ray_cluster, tmp_path, capsys, one_thread):
    """An untrained MLP energy (U = |y|^2 / (2 (1 + t)), no learned c(t) yet): its Z grows with t,
    so `dsm score` prints the warning line, and logs the consistency/* metrics to its MLflow run."""
    from mlflow.tracking import MlflowClient

    from dsm.tracking import tracking_uri

    model = _vector_bundle(tmp_path)
    data = tmp_path / "data.npy"
    np.save(data, np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32))
    out, ws = tmp_path / "out", tmp_path / "ws"
    rc = main(["score", str(model), "--data", str(data), "--out", str(out), "--t-grid", "", "--consistency-samples",
               "64", "--workspace", str(ws)])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    warning = next(line for line in stdout.splitlines() if line.startswith("WARNING: consistency/log_z_spread_nats"))
    spread = json.loads((out / "scores.json").read_text())["summary"]["consistency"]["metrics"][
        "consistency/log_z_spread_nats"]
    assert warning == (f"WARNING: consistency/log_z_spread_nats = {spread:.4g} is beyond its bound 0.1 "
                       "(max - min of log Z over large t; see docs/scoring.md)")
    assert spread == pytest.approx(4 / 2 * math.log(10), rel=0.05)  # d/2 log(t1/t0) of an unnormalized Gaussian
    assert "consistency (64 images): log Z" in stdout
    rid = json.loads((out / "scores.json").read_text())["mlflow_run_id"]
    logged = MlflowClient(tracking_uri(ws)).get_run(rid).data.metrics
    assert logged["consistency/log_z_spread_nats"] == pytest.approx(spread)
    assert "consistency/ode_gap_abs_nats_per_dim" in logged


@pytest.mark.parametrize("case", ["missing", "shape", "unnormalized", "empty", "empty_folder"])
def test_bad_input_fails_clearly(tmp_path, capsys, case):
    model = _vector_bundle(tmp_path, normalized=case != "unnormalized")
    data = tmp_path / "data.npy"
    np.save(data, np.zeros((10, 4), np.float32))
    expect = {"missing": "nope.pt", "shape": "does not match", "unnormalized": "dsm normalize",
              "empty": "empty", "empty_folder": "empty input"}[case]
    if case == "missing":
        model = tmp_path / "nope.pt"
    elif case == "shape":
        np.save(data, np.zeros((10, 7), np.float32))
    elif case == "empty":
        np.save(data, np.zeros((0, 4), np.float32))
    elif case == "empty_folder":
        data = tmp_path / "images"
        data.mkdir()
    rc = main(["score", str(model), "--data", str(data), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and expect in err, err


def test_interrupted_job_finishes_with_one_row_per_key(ray_cluster, tmp_path):
    model = _vector_bundle(tmp_path, width=256)
    data = tmp_path / "data.npy"
    np.save(data, np.random.default_rng(0).normal(size=(8000, 4)).astype(np.float32))  # 8 pieces
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dsm.cli", "score", str(model), "--data", str(data), "--out", str(out),
           "--t-grid", "1e-3:1e2:12", "--noise-samples", "8", "--consistency-samples", "0",
           "--workspace", str(tmp_path / "ws")]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while len(list((out / "parts").glob("part-*.parquet"))) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    done_before = len(list((out / "parts").glob("part-*.parquet")))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1 <= done_before < 8, f"{done_before} parts before the kill; {proc.stdout.read()[-2000:]}"

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert second.stdout.strip().splitlines()[-1] == str(out.resolve() / "parts")
    table = read_scores(out)
    keys = table.column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 8000
    assert json.loads((out / "scores.json").read_text())["status"] == "finished"
