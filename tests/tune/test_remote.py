"""``dsm tune --storage s3://...``: a sweep whose trials read shards from a bucket and keep their
checkpoints, exports and Tune's experiment state there, so that a multi-node sweep
needs no shared folder. A real moto S3 server on 127.0.0.1 (tests/servers.py), real Ray Tune."""

from __future__ import annotations

import csv

import pytest

from dsm.cli import main as cli
from dsm.plumbing.store import Location
from dsm.tune.trial import STARTS_TAG
from tests import servers
from tests.tune.conftest import REPO
from tests.tune.test_sweep import _runs


def _spec(write_spec, bucket: str):
    return write_spec({"name": "in-bucket",
                       "overrides": {"steps": 20, "log_every": 10, "checkpoint": {"every": 10, "num_to_keep": 1},
                                     "eval": {"samples": 64, "psnrs": [10], "grid": False, "consistency": False},
                                     "data": {"dataset": None, "path": f"{bucket}/digits/train",
                                              "eval_path": f"{bucket}/digits/test"}},
                       "space": {"optim.lr": {"grid": [2e-3, 1e-3]}}, "search": "grid",
                       "scheduler": {"kind": "fifo"}, "max_concurrent": 1,
                       "resources": {"workers": 1, "cpus_per_worker": 1.0}})


@pytest.mark.slow  # about 90 s: two short trials, then the same command again
def test_a_sweep_reads_and_keeps_its_runs_in_a_bucket(ray_cluster, digits_workspace, write_spec, bucket, tmp_path,
                                                       capsys):
    (digits,) = (digits_workspace / "data").glob("digits-*")
    ws = tmp_path / "ws"  # its own MLflow store: test_sweep counts the sweeps in the shared one
    servers.upload(digits, f"{bucket}/digits")
    spec = _spec(write_spec, bucket)
    args = ["tune", str(spec), "--workspace", str(ws), "--storage", f"{bucket}/sweeps"]

    assert cli([*args, "--dry-run"]) == 0
    assert f"checkpoints in {bucket}/sweeps/in-bucket" in capsys.readouterr().out
    assert cli(args) == 0
    out = capsys.readouterr().out
    sweep = Location.of(f"{bucket}/sweeps/in-bucket")
    assert any(n.startswith("experiment_state-") for n in sweep.listing()), sweep.listing()
    for trial in ("in-bucket-t000", "in-bucket-t001"):
        run = sweep / "runs" / trial
        assert {"model.pt", "model-best.pt", "config.yaml"} <= set(run.listing()), trial
        assert any(f.name.startswith("checkpoint_") for f in run.subfolders()), trial
    local = ws / "sweeps" / "in-bucket"
    assert not list(local.glob("runs/*/checkpoint_*"))  # nothing of Tune's or Ray Train's on this disk
    rows = list(csv.DictReader(open(local / "results" / "results.csv")))
    assert [r["status"] for r in rows] == ["completed", "completed"], rows
    assert out.strip().splitlines()[-1] == str(local / "results" / "best_config.yaml")

    # the same command restores the sweep from the bucket and keeps both finished trials
    assert cli(args) == 0
    assert f"resuming sweep 'in-bucket' from {bucket}/sweeps/in-bucket" in capsys.readouterr().out
    client, runs = _runs(ws)
    starts = {r.data.tags["dsm.run_name"]: r.data.tags[STARTS_TAG] for r in runs
              if r.data.tags.get("dsm.sweep") == "in-bucket"}
    assert starts == {"in-bucket-t000": "1", "in-bucket-t001": "1"}, starts
    (parent,) = [r for r in runs if r.data.tags.get("dsm.kind") == "sweep" and r.info.run_name == "in-bucket"]
    assert parent.data.tags["dsm.sweep_storage"] == f"{bucket}/sweeps/in-bucket"


@pytest.mark.slow  # about a minute: one short trial
def test_a_local_storage_folder_holds_the_trials_runs(ray_cluster, digits_workspace, write_spec, tmp_path):
    """--storage a folder (a shared mount, say) outside the workspace: Tune's experiment and the
    trial's Ray Train run both go there, and the exports are copied back beside the results."""
    (digits,) = (digits_workspace / "data").glob("digits-*")
    spec = write_spec({"name": "elsewhere",
                       "overrides": {"steps": 10, "log_every": 10, "checkpoint": {"every": 10, "num_to_keep": 1},
                                     "eval": {"samples": 64, "psnrs": [10], "grid": False, "consistency": False},
                                     "data": {"dataset": None, "path": str(digits / "train"),
                                              "eval_path": str(digits / "test")}},
                       "space": {"optim.lr": {"grid": [1e-3]}}, "search": "grid", "scheduler": {"kind": "fifo"},
                       "resources": {"workers": 1, "cpus_per_worker": 1.0}})
    ws, storage = tmp_path / "ws", tmp_path / "shared"
    assert cli(["tune", str(spec), "--workspace", str(ws), "--storage", str(storage)]) == 0
    trial = storage / "elsewhere" / "runs" / "elsewhere-t000"
    assert list(trial.glob("checkpoint_*")) and (trial / "model.pt").is_file()
    assert list((storage / "elsewhere").glob("experiment_state-*.json"))
    local = ws / "sweeps" / "elsewhere"
    assert not list(local.glob("runs/*/checkpoint_*"))
    assert (local / "runs" / "elsewhere-t000" / "model.pt").read_bytes() == (trial / "model.pt").read_bytes()


@pytest.mark.parametrize("command", ["tune", "train"])
def test_an_http_storage_is_refused_before_ray(command, write_spec, tmp_path, capsys, monkeypatch):
    import dsm.runtime.cluster

    def no_ray(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(dsm.runtime.cluster, "connect", no_ray)
    config = str(write_spec({"space": {"optim.lr": {"grid": [1e-3]}}})) if command == "tune" else \
        str(REPO / "configs" / "digits-smoke.yaml")
    url = "http://127.0.0.1:9/runs"
    assert cli([command, config, "--workspace", str(tmp_path / "ws"), "--storage", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"dsm {command}: {url}: --storage cannot be an HTTP URL (read-only); give a local folder "
                       "or an s3:// or gs:// URL"), err
    monkeypatch.setenv("DSM_STORAGE", url)
    assert cli([command, config, "--workspace", str(tmp_path / "ws")]) == 2
    assert "$DSM_STORAGE cannot be an HTTP URL" in capsys.readouterr().err
