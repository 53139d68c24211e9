"""`dsm score --data URL --out URL` against a real S3 server (moto, tests/servers.py)
and the session's real Ray: parts written in one PUT each, resumption by one listing, the
scores equal to a local run's, figures uploaded, and a 2-node cluster that refuses a
node-local --out but takes an s3:// one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dsm.api import load
from dsm.cli import main
from dsm.data.inputs import open_input
from dsm.plumbing.store import Location
from dsm.scoring.columns import ScoreSpec
from dsm.scoring.job import PARTS, PieceScorer, job_options, prepare_out, read_scores, write_json
from tests import servers

REPO = Path(__file__).resolve().parents[2]
FAST = ["--t-grid", "0.1", "--noise-samples", "2", "--consistency-samples", "0", "--actors", "1"]


@pytest.fixture(autouse=True)
def fresh_clients():
    """s3fs caches its clients per process; each test's buckets are new (tests/plumbing/test_store.py)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> Path:
    """An untrained digits-smoke UNet energy, stored as normalized (log Z = 0): scoring needs a
    normalized model, not a good one."""
    import torch

    from dsm.core.bundle import save_bundle
    from dsm.plumbing.config import load_config
    from dsm.train import build
    from dsm.train.config import TrainConfig

    cfg = load_config(TrainConfig, REPO / "configs" / "digits-smoke.yaml")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("digits-model") / "model.pt"
    save_bundle(path, build.build_model(cfg, build.DataShape((1, 8, 8), True)), cfg, (1, 8, 8), True,
                normalization={"value": 0.0})
    return path


@pytest.fixture(scope="module")
def digits_test(digits_workspace) -> Path:
    """The digits test split: 359 images in 16 shards, so 16 parts."""
    (split,) = (digits_workspace / "data").glob("digits-*/test")
    return split


def _objects(url: str) -> dict[str, dict]:
    """{key below url: s3fs info (ETag, LastModified, size)} of every object under ``url``."""
    import s3fs

    fs = s3fs.S3FileSystem()
    root = url.removeprefix("s3://")
    fs.invalidate_cache()
    return {p[len(root) + 1:]: info for p, info in fs.find(root, detail=True).items()}


def _score(model: Path, data: str, out: str, ws: Path, *extra: str) -> int:
    return main(["score", str(model), "--data", data, "--out", out, *FAST, "--workspace", str(ws), *extra])


@pytest.mark.slow  # a Ray Data job and two reports: 20-30 s
def test_s3_data_and_out_equal_a_local_run(ray_cluster, digits_model, digits_test, bucket, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from dsm.runtime.tracking import tracking_uri

    data, out, ws = f"{bucket}/digits/test", f"{bucket}/scores", tmp_path / "ws"
    servers.upload(digits_test, data)
    assert _score(digits_model, data + "/", out, ws) == 0
    stdout = capsys.readouterr().out
    assert stdout.strip().splitlines()[-1] == f"{out}/parts"
    # The same job into a local folder, each piece scored here as an actor would (no second Ray job)
    folder, spec = tmp_path / "local", ScoreSpec(t_grid=(0.1,), n_noise=2)
    pending = prepare_out(folder, job_options(digits_model, load(digits_model), open_input(digits_test), spec))
    scorer = PieceScorer(digits_model, str(digits_test), str(folder), spec)
    for i in pending:
        scorer.score_piece(i)

    remote, local = read_scores(out), read_scores(folder)
    keys = remote.column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 359
    assert remote.column_names == local.column_names and keys == local.column("key").to_pylist()
    for c in remote.column_names[1:]:
        np.testing.assert_array_equal(np.asarray(remote.column(c).to_pylist(), dtype=float),
                                      np.asarray(local.column(c).to_pylist(), dtype=float), err_msg=c)

    objects = sorted(_objects(out))
    assert objects == ["figures/d_eff.png", "figures/logp_hist.png",
                       *(f"parts/part-{i:06d}.parquet" for i in range(16)), "scores.json"]
    info = json.loads(Location.of(f"{out}/scores.json").read_text())
    assert info["status"] == "finished" and info["options"]["data"] == data
    run = MlflowClient(tracking_uri(ws)).get_run(info["mlflow_run_id"])
    assert run.info.run_name == f"score-{digits_model.parent.name}-test" and run.info.status == "FINISHED"
    assert run.data.params["data"] == data + "/"
    artifacts = {a.path for a in MlflowClient(tracking_uri(ws)).list_artifacts(run.info.run_id)}
    assert {"scores.json", "logp_hist.png", "d_eff.png"} <= artifacts

    # dsm report reads the bucket's scores (and the bucket's images for its grids) as a folder's
    from dsm.report.build import build_report, default_report_folder

    write_json(folder / "scores.json", info)  # as dsm score's CLI would have left it
    there, here = build_report(out, tmp_path / "report", top=3), build_report(folder, tmp_path / "rep-local", top=3)
    assert there["n"] == here["n"] == 359 and there["entropy"] == here["entropy"]
    assert (tmp_path / "report" / "report.md").read_text().count("![") >= 2
    assert default_report_folder(Location.of(out)) == Path.cwd() / "report-scores"


@pytest.mark.slow  # two Ray Data jobs: 20-30 s on a busy 2-core machine
def test_a_failed_job_resumes_without_rewriting_parts(ray_cluster, digits_model, digits_test, bucket, tmp_path,
                                                       capsys):
    """The last shard is unreadable for the first run, which fails after some parts are on S3;
    once it is repaired, the same command scores only the rest: the finished parts' objects are
    not rewritten, every key is there once, and no stray object is left."""
    data, out, ws = f"{bucket}/digits/test", f"{bucket}/scores", tmp_path / "ws"
    servers.upload(digits_test, data)
    last = Location.of(f"{data}/test-000015.tar")
    last.write_bytes(b"not a tar" * 100)
    assert _score(digits_model, data, out, ws) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dsm score: ") and err[-1].endswith(
        f"{last}: corrupt or truncated tar (900 bytes is not a whole number of 512-byte blocks)"), err[-3:]
    (log,) = (Path(ln.split("full traceback in ", 1)[1]) for ln in err if "full traceback in " in ln)
    assert log.is_file() and not str(log).startswith("s3:") and "test-000015.tar" in log.read_text()
    before = {k: (v["ETag"], v["LastModified"]) for k, v in _objects(out).items() if k.startswith("parts/")}
    assert 1 <= len(before) < 16, before
    assert Location.of(f"{out}/error.log").read_text() == log.read_text()  # a copy beside the parts

    last.upload(digits_test / "test-000015.tar")
    assert _score(digits_model, data, out, ws) == 0
    after = _objects(out)
    assert all((after[k]["ETag"], after[k]["LastModified"]) == v for k, v in before.items())
    assert sorted(k for k in after if k.startswith("parts/")) == [f"parts/part-{i:06d}.parquet" for i in range(16)]
    assert set(after) - {k for k in after if k.startswith(("parts/", "figures/"))} == {"scores.json", "error.log"}
    keys = read_scores(out).column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 359


def test_resuming_lists_once_and_restart_removes_remote_parts(digits_model, digits_test, bucket, monkeypatch):
    """No Ray: the job's first part is written by hand (a job killed after one piece). The re-run's
    check is one listing of parts/ (not a request per part); another job is refused naming the
    difference; --restart deletes the remote parts."""

    out, spec = f"{bucket}/scores", ScoreSpec(t_grid=())
    opts = job_options(digits_model, load(digits_model), open_input(digits_test), spec)
    assert prepare_out(out, opts) == list(range(16))
    PieceScorer(digits_model, str(digits_test), out, spec).score_piece(3)

    def only_off_parts(method):
        def checked(self, *a):
            if "/parts/" in f"{self}/":
                raise AssertionError(f"a request for {self}: parts are found by one listing")
            return method(self, *a)
        return checked

    with monkeypatch.context() as m:
        for name in ("is_file", "size"):
            m.setattr(Location, name, only_off_parts(getattr(Location, name)))
        assert prepare_out(out, opts) == [i for i in range(16) if i != 3]

    with pytest.raises(ValueError, match=r"holds scores of another job \(differs in n_noise\).*--restart"):
        prepare_out(out, {**opts, "n_noise": 8})
    assert prepare_out(out, {**opts, "n_noise": 8}, restart=True) == list(range(16))
    assert sorted(_objects(out)) == ["scores.json"]
    assert json.loads(Location.of(f"{out}/scores.json").read_text())["options"]["n_noise"] == 8


def test_an_http_out_is_refused_before_ray(digits_model, digits_test, tmp_path, capsys, monkeypatch):
    import dsm.runtime.cluster

    def no_ray(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(dsm.runtime.cluster, "connect", no_ray)
    for url in ("http://127.0.0.1:9/out", "https://example.invalid/out"):
        rc = main(["score", str(digits_model), "--data", str(digits_test), "--out", url])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err == [f"dsm score: {url}: --out cannot be an HTTP URL (read-only); give a local "
                                   "folder or an s3:// or gs:// URL"], err


def test_a_missing_data_object_names_the_url(digits_model, bucket, capsys):
    rc = main(["score", str(digits_model), "--data", f"{bucket}/nope", "--out", f"{bucket}/out"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{bucket}/nope/manifest.json" in err[0], err
    assert _objects(bucket) == {}  # nothing written


def test_a_file_url_out_is_a_local_folder(digits_model, digits_test, tmp_path):

    opts = job_options(digits_model, load(digits_model), open_input(digits_test), ScoreSpec(t_grid=()))
    assert prepare_out(f"file://{tmp_path}/out", opts) == list(range(16))
    assert (tmp_path / "out" / PARTS).is_dir() and (tmp_path / "out" / "scores.json").is_file()


@pytest.mark.slow  # a `dsm score` process killed, then the same command here, on the session's Ray: 20-40 s
def test_a_killed_job_finishes_on_s3(ray_cluster, digits_model, digits_test, bucket, tmp_path, capsys):
    """SIGKILL of `dsm score` once some parts are on S3 (an actor may be mid-PUT), then the same
    command: one row per key, the finished parts' objects untouched, nothing else left. The killed
    one is a process of its own (the kill is the point); the second runs in this process, on the
    same (session's) Ray the first joined."""
    data, out = f"{bucket}/digits/test", f"{bucket}/scores"
    servers.upload(digits_test, data)
    # 6 t x 8 noise draws (12 x 16 before): a part is 0.3-0.5 s of one actor's work (1.5 s before), so
    # the kill, a fraction of a second after the first part is listed, still leaves most of the 16.
    cmd = [sys.executable, "-m", "dsm.cli", "score", str(digits_model), "--data", data, "--out", out,
           "--t-grid", "1e-3:1e2:6", "--noise-samples", "8", "--consistency-samples", "0", "--actors", "1",
           "--workspace", str(tmp_path / "ws")]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not any(k.startswith("parts/") for k in _objects(out)):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {k: (v["ETag"], v["LastModified"]) for k, v in _objects(out).items() if k.startswith("parts/")}
    assert 1 <= len(before) < 16, f"{len(before)} parts before the kill; {proc.stdout.read()[-2000:]}"

    capsys.readouterr()
    rc = main(cmd[3:])
    second = capsys.readouterr()
    assert rc == 0, second.out[-2000:] + second.err[-3000:]
    assert second.out.strip().splitlines()[-1] == f"{out}/parts"
    after = _objects(out)
    assert all((after[k]["ETag"], after[k]["LastModified"]) == v for k, v in before.items())
    assert sorted(k for k in after if not k.startswith("figures/")) == \
        [*(f"parts/part-{i:06d}.parquet" for i in range(16)), "scores.json"]
    keys = read_scores(out).column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 359


@pytest.mark.slow  # a 2-node Ray cluster of its own: 30-60 s on 2 cores
def test_two_nodes_refuse_a_local_out_and_take_s3(digits_model, digits_test, bucket, tmp_path):
    from tests.procs import run_cluster_driver

    local_out, s3_out = tmp_path / "local-out", f"{bucket}/scores"
    res, _ = run_cluster_driver(REPO / "tests" / "scoring" / "multinode_score.py", str(digits_model),
                                str(digits_test), str(local_out), s3_out, str(tmp_path / "ws"), timeout=600)
    assert res["nodes_alive"] == 2
    assert res["local_rc"] == 2, res
    refusal = res["local_err"].strip().splitlines()
    assert refusal[-1].startswith(f"dsm score: storage path {str(local_out)!r} is local to one machine, but the "
                                  "Ray cluster has 2 alive nodes"), refusal
    assert not list((local_out / PARTS).glob("*")), "a part was written before the refusal"
    assert res["s3_rc"] == 0, res
    assert res["s3_last_line"] == f"{s3_out}/parts"
    keys = read_scores(s3_out).column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 359


def test_normalize_reads_held_out_shards_from_a_bucket(digits_model, digits_test, bucket, tmp_path):
    """dsm normalize on a bucket's split gives the local split's log Z (noise is seeded by key)."""
    import shutil

    from dsm.scoring.normalization import normalize_model

    servers.upload(digits_test, f"{bucket}/digits/test")
    here, there = tmp_path / "here.pt", tmp_path / "there.pt"
    shutil.copy(digits_model, here)
    shutil.copy(digits_model, there)
    local = normalize_model(here, digits_test, samples=64)
    remote = normalize_model(there, f"{bucket}/digits/test", samples=64)
    assert remote["value"] == local["value"] and remote["stderr"] == local["stderr"]
    assert remote["data"] == f"{bucket}/digits/test" and load(there).log_z == pytest.approx(remote["value"])
