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

from dsm.api import DEFAULT_T_RANGE
from dsm.cli import main
from dsm.core.bundle import save_bundle
from dsm.core.consistency import Options as ConsistencyOptions
from dsm.plumbing.config import load_config
from dsm.scoring.columns import ScoreSpec
from dsm.scoring.job import read_scores, score
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
    score(gaussian_ref, gaussian_npy, tmp_path / "b", ScoreSpec(t_grid=(0.01, 1.0), n_noise=4, batch_size=500),
          actors=1, consistency=None)
    other = read_scores(tmp_path / "b")
    assert other.column("key").to_pylist() == table.column("key").to_pylist()
    for c in table.column_names[1:]:
        np.testing.assert_allclose(np.asarray(other.column(c).to_pylist(), dtype=float),
                                   np.asarray(table.column(c).to_pylist(), dtype=float), rtol=1e-6, err_msg=c)


def _vector_bundle(tmp_path, d=4, normalized=True, width=64, log_z=0.0):
    x = tmp_path / "ref.npy"
    np.save(x, np.zeros((2, d), np.float32))
    cfg = load_config(TrainConfig, "configs/vectors.yaml",
                      [f"data.path={x}", f"data.eval_path={x}", f"model.mlp.width={width}"])
    torch.manual_seed(0)
    model = build.build_model(cfg, build.DataShape((d,), False))
    with torch.no_grad():
        model.log_z.fill_(log_z)  # as dsm normalize stores it: the buffer, and the record beside it
    path = tmp_path / "model.pt"
    save_bundle(path, model, cfg, (d,), False, normalization={"value": log_z} if normalized else None)
    return path


@pytest.mark.slow  # a second scoring job (about 7 s): the quick loop keeps the exact Gaussian's
def test_score_warns_about_an_inconsistent_model(ray_cluster, tmp_path, capsys, one_thread):
    """An untrained MLP energy (U = |y|^2 / (2 (1 + t)), no learned c(t) yet): its Z grows with t,
    so `dsm score` prints the warning line, and logs the consistency/* metrics to its MLflow run."""
    from mlflow.tracking import MlflowClient

    from dsm.runtime.tracking import tracking_uri

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


@pytest.mark.parametrize("case", ["missing", "shape", "unnormalized", "empty", "empty_folder", "bad_image",
                                  "random_bytes_model", "nan_rows"])
def test_bad_input_fails_clearly(tmp_path, capsys, case):
    model = _vector_bundle(tmp_path, normalized=case != "unnormalized")
    data = tmp_path / "data.npy"
    np.save(data, np.zeros((10, 4), np.float32))
    expect = {"missing": "nope.pt", "shape": "does not match", "unnormalized": "dsm normalize",
              "empty": "empty", "empty_folder": "empty input", "bad_image": "b.png: unreadable image",
              "random_bytes_model": "model.pt: not a dsm model",
              "nan_rows": "data.npy: 2 of 10 rows hold NaN or Inf (first keys: 000003, 000007)"}[case]
    if case == "missing":
        model = tmp_path / "nope.pt"
    elif case == "shape":
        np.save(data, np.zeros((10, 7), np.float32))
    elif case == "empty":
        np.save(data, np.zeros((0, 4), np.float32))
    elif case == "empty_folder":
        data = tmp_path / "images"
        data.mkdir()
    elif case == "bad_image":  # checked before Ray starts: no actor traceback, no half-made --out
        from PIL import Image

        data = tmp_path / "images"
        data.mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(data / "a.png")
        (data / "b.png").write_bytes(b"\x89PNG but not really")
    elif case == "random_bytes_model":
        model.write_bytes(os.urandom(4096))
    elif case == "nan_rows":  # refused before Ray starts, naming the keys, whatever the --t-grid
        x = np.zeros((10, 4), np.float32)
        x[3, 1], x[7, 0] = np.nan, np.inf
        np.save(data, x)
    rc = main(["score", str(model), "--data", str(data), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and expect in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_changed_model_or_data_makes_a_new_job(tmp_path, capsys):
    """Parts of a job killed midway, then `dsm normalize` rewrites the model's log Z in
    place (or the data file is rewritten): the re-run must refuse before Ray starts, naming what
    changed, instead of mixing two log Z in one table; --restart discards the old parts."""
    from dsm.api import load
    from dsm.data.inputs import open_input
    from dsm.scoring.job import PieceScorer, job_options, part_path, prepare_out

    model = _vector_bundle(tmp_path)
    data, out = tmp_path / "data.npy", tmp_path / "out"
    np.save(data, np.random.default_rng(0).normal(size=(2500, 4)).astype(np.float32))  # 3 pieces
    spec = ScoreSpec(t_grid=())
    inp = open_input(data)
    pending = prepare_out(out, job_options(model, load(model), inp, spec))
    PieceScorer(model, str(data), str(out), spec).score_piece(pending[0])  # killed after one part
    original = model.read_bytes()

    def rerun(*extra):
        rc = main(["score", str(model), "--data", str(data), "--out", str(out), "--t-grid", "",
                   "--consistency-samples", "0", *extra])
        return rc, capsys.readouterr().err

    _vector_bundle(tmp_path, log_z=12.5)  # dsm normalize on the same file
    rc, err = rerun()
    assert rc == 2 and "model_log_z" in err and "model_sha256" in err and "--restart" in err, err
    assert part_path(out, 0).is_file()  # nothing lost by refusing

    model.write_bytes(original)  # the original model back: the same job again as far as the model goes
    np.save(data, np.random.default_rng(1).normal(size=(2500, 4)).astype(np.float32))
    rc, err = rerun()
    assert rc == 2 and "data_sha256" in err and "model" not in err.split("differs in")[1].split(")")[0], err

    opts = job_options(model, load(model), open_input(data), spec)
    assert prepare_out(out, opts, restart=True) == [0, 1, 2] and not part_path(out, 0).is_file()
    assert json.loads((out / "scores.json").read_text())["options"]["data_sha256"] == opts["data_sha256"]


@pytest.mark.parametrize("spec_kw, device, differs", [
    ({"precision": "bf16"}, "cpu", "precision"),
    ({}, "cuda", "device"),
])
def test_a_resumed_job_keeps_its_precision_and_device(tmp_path, spec_kw, device, differs):
    """Parts scored in other arithmetic differ in the last digits: one table must not mix them,
    so a re-run at another precision or on another device is refused, naming which."""
    from dsm.api import load
    from dsm.data.inputs import open_input
    from dsm.scoring.job import job_options, prepare_out

    model, data, out = _vector_bundle(tmp_path), tmp_path / "data.npy", tmp_path / "out"
    np.save(data, np.zeros((10, 4), np.float32))
    inp, loaded = open_input(data), load(model)
    first = job_options(model, loaded, inp, ScoreSpec(t_grid=()))
    assert first["precision"] == "fp32" and first["device"] == "cpu"
    assert prepare_out(out, first) == [0]
    assert json.loads((out / "scores.json").read_text())["options"]["precision"] == "fp32"
    again = job_options(model, loaded, inp, ScoreSpec(t_grid=(), **spec_kw), device=device)
    with pytest.raises(ValueError, match=rf"differs in {differs}\)"):
        prepare_out(out, again)
    assert prepare_out(out, again, restart=True) == [0]
    assert prepare_out(out, again) == [0]  # the new job resumes itself


def test_out_pointing_at_a_file_is_one_line(tmp_path, capsys):
    model = _vector_bundle(tmp_path)
    data, out = tmp_path / "data.npy", tmp_path / "out.txt"
    np.save(data, np.zeros((10, 4), np.float32))
    out.write_text("not a folder")
    rc = main(["score", str(model), "--data", str(data), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == (f"dsm score: --out {out} is a file; "
                                       "give a folder (it will hold parts/ and scores.json)")


@pytest.mark.slow  # over a minute: kept out of the quick loop
def test_interrupted_job_finishes_with_one_row_per_key(ray_cluster, tmp_path):
    model = _vector_bundle(tmp_path, width=256)
    data = tmp_path / "data.npy"
    # 4 pieces of 1000 (was 8): a kill after the first part still leaves pieces to resume, and the
    # re-run scores half as many rows
    np.save(data, np.random.default_rng(0).normal(size=(4000, 4)).astype(np.float32))
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
    assert 1 <= done_before < 4, f"{done_before} parts before the kill; {proc.stdout.read()[-2000:]}"

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert second.stdout.strip().splitlines()[-1] == str(out.resolve() / "parts")
    table = read_scores(out)
    keys = table.column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 4000
    assert json.loads((out / "scores.json").read_text())["status"] == "finished"


def test_an_actor_error_is_one_line_naming_the_file(ray_cluster, tmp_path, capsys):
    """An image whose header reads but whose pixels are cut off fails in the actor that
    decodes it; the user sees that image's path in one line, not the actor's traceback."""
    from PIL import Image

    cfg = load_config(TrainConfig, "configs/digits-smoke.yaml")
    model = tmp_path / "model.pt"
    save_bundle(model, build.build_model(cfg, build.DataShape((1, 8, 8), True)), cfg, (1, 8, 8), True,
                normalization={"value": 0.0})
    data = tmp_path / "images"
    data.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(data / name)
    good = (data / "b.png").read_bytes()
    (data / "b.png").write_bytes(good[:len(good) - 30])  # the header is whole, the pixel data is not
    rc = main(["score", str(model), "--data", str(data), "--out", str(tmp_path / "out"), "--t-grid", "",
               "--consistency-samples", "0", "--actors", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "b.png: unreadable image" in err[-1], err[-2:]
