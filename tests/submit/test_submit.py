"""`dsm submit` / `dsm jobs` against a real Ray head of our own (tests/submit/conftest.py), running
`dsm train` on the tiny digits config and logging to the test's own SQLite MLflow store.

The commands run in this process (``cli``: main's return value is the exit status) except where
the process matters: a ``--follow`` that streams the job's log, and a submit that waits for a job
(a subprocess's timeout bounds it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dsm.runtime.tracking import tracking_uri

REPO = Path(__file__).resolve().parents[2]
TINY = ["dsm", "train", "configs/digits-smoke.yaml", "steps=30", "checkpoint.every=15", "log_every=5",
        "scaling.workers=1", "data.batch_size=32", "eval.samples=64", "eval.grid=false"]


def dsm(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
    e = {**os.environ, **(env or {})}
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "DSM_WORKSPACE"):
        if not env or k not in env:
            e.pop(k, None)
    return subprocess.run([sys.executable, "-m", "dsm.cli", *args], check=False, capture_output=True, text=True,
                          env=e, timeout=timeout, cwd=cwd)


@pytest.fixture
def cli(capsys, monkeypatch):
    """``dsm ARGS`` in this process, from the project folder and with no cluster, store or
    workspace from the environment (as ``dsm()`` runs it); returns a CompletedProcess."""
    from dsm.cli import main

    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "DSM_WORKSPACE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(REPO)

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        rc = main(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["dsm", *args], rc, out.out, out.err)

    return run


def _runs(ws: Path, name: str):
    client = MlflowClient(tracking_uri(ws))
    exp = client.get_experiment_by_name("dsm-train")
    return client, client.search_runs([exp.experiment_id], filter_string=f"tags.`dsm.run_name` = '{name}'")


@pytest.mark.slow  # about 50 s alone on 2 CPUs, minutes when the machine is shared
def test_submit_train_follow_logs_and_mlflow(ray_head, tmp_path, cli):
    ws = tmp_path / "ws"
    # From another directory: the config is found in the project, which is the job's working_dir.
    r = dsm("submit", "--address", ray_head.dashboard_url, "--workspace", str(ws), "--follow", "--", *TINY,
            cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("job dsm-train-") and last.endswith(": SUCCEEDED"), last
    sid = last.split()[1].rstrip(":")
    assert sid.startswith("dsm-train-") and len(sid) == len("dsm-train-") + 12
    assert "step 30/30" in out  # --follow streamed the training's progress lines
    export = ws / "runs"
    (run_dir,) = export.iterdir()
    assert (run_dir / "model.pt").is_file()

    # The job logged to this workspace's SQLite store, which `dsm ui --workspace` reads.
    client, runs = _runs(ws, run_dir.name)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")] == [5, 10, 15, 20, 25, 30]

    logs = cli("jobs", "logs", sid, "--address", ray_head.dashboard_url)
    assert logs.returncode == 0 and str(run_dir / "model.pt") in logs.stdout
    st = cli("jobs", "status", sid, "--address", ray_head.dashboard_url)
    assert st.returncode == 0 and st.stdout.startswith(f"{sid}: SUCCEEDED")
    ls = cli("jobs", "list", "--address", ray_head.dashboard_url)
    assert ls.returncode == 0 and sid in ls.stdout

    # The identical command is the same job: it attaches to the finished one, submits nothing.
    again = cli("submit", "--address", ray_head.dashboard_url, "--workspace", str(ws), "--no-wait", "--", *TINY)
    assert again.returncode == 0, again.stderr
    assert "already job" in again.stdout and again.stdout.strip().splitlines()[-1] == sid


@pytest.mark.slow
def test_stopped_job_is_resubmitted_and_resumes(ray_head, tmp_path, cli):
    """Stop a running training job after its first checkpoint; the same `dsm submit` attaches while
    it runs, then re-submits it as <id>-r1 once stopped, and training resumes from the checkpoint."""
    ws = tmp_path / "ws"
    # 200 steps (400 before): the stop is asked well under a second after the checkpoint at step
    # 20 is registered, which leaves 180 steps (15-30 s on 2 cores) to stop the job in.
    cmd = ["dsm", "train", "configs/digits-smoke.yaml", "steps=200", "checkpoint.every=20", "log_every=20",
           "scaling.workers=1", "data.batch_size=32", "eval.enabled=false"]
    sub = ["submit", "--address", ray_head.dashboard_url, "--workspace", str(ws), "--no-wait", "--", *cmd]
    first = cli(*sub)
    assert first.returncode == 0, first.stderr
    sid = first.stdout.strip().splitlines()[-1]

    attach = cli(*sub)  # while it runs: the same job, not a second one
    assert attach.returncode == 0 and attach.stdout.strip().splitlines()[-1] == sid

    deadline = time.time() + 240
    snap = None
    while time.time() < deadline:
        snaps = list((ws / "runs").glob("*/checkpoint_manager_snapshot.json")) if (ws / "runs").is_dir() else []
        if snaps and "checkpoint_" in snaps[0].read_text():
            snap = snaps[0]
            break
        time.sleep(0.2)
    assert snap, cli("jobs", "logs", sid, "--address", ray_head.dashboard_url).stdout[-3000:]
    stop = cli("jobs", "stop", sid, "--address", ray_head.dashboard_url)
    assert stop.returncode == 0 and "stop requested" in stop.stdout, stop.stdout + stop.stderr
    deadline = time.time() + 60
    while time.time() < deadline and "STOPPED" not in cli("jobs", "status", sid, "--address",
                                                          ray_head.dashboard_url).stdout:
        time.sleep(0.25)
    assert not (snap.parent / "model.pt").exists()

    again = dsm(*[a for a in sub if a != "--no-wait"], timeout=400)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert f"submitted job {sid}-r1" in again.stdout
    logs = cli("jobs", "logs", f"{sid}-r1", "--address", ray_head.dashboard_url).stdout
    assert "resumed" in logs and "at step" in logs, logs[-3000:]
    assert (snap.parent / "model.pt").is_file()
    client, runs = _runs(ws, snap.parent.name)
    assert len(runs) == 1
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")]
    assert steps == list(range(20, 201, 20)), steps


def test_unknown_job_id_is_a_clear_error(ray_head, cli):
    for args in (["status", "dsm-train-000000000000"], ["logs", "nope"], ["stop", "nope"]):
        r = cli("jobs", *args, "--address", ray_head.dashboard_url)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"no job {args[1]!r} on this cluster" in r.stderr


def test_bad_command_fails_before_upload(ray_head, cli):
    r = cli("submit", "--address", ray_head.dashboard_url, "--", "dsm", "train", "configs/digits-smoke.yaml",
            "optim.lr=-1")
    assert r.returncode == 2 and "optim.lr" in r.stderr
    r = cli("submit", "--address", ray_head.dashboard_url, "--", "dsm", "nosuchcommand")
    assert r.returncode == 2 and "not a valid dsm command" in r.stderr


# --- no cluster needed -------------------------------------------------------------------------

def test_no_address_is_a_clear_error(cli):
    r = cli("submit", "--", "dsm", "train", "configs/digits-smoke.yaml")
    assert r.returncode == 2 and "no cluster address" in r.stderr and "RAY_ADDRESS" in r.stderr


def test_refused_address_fails_fast(cli):
    t = time.time()
    r = cli("jobs", "list", "--address", "127.0.0.1:1")
    assert r.returncode == 2 and "cannot reach a Ray dashboard at http://127.0.0.1:1" in r.stderr
    assert time.time() - t < 20


def test_silent_address_fails_within_the_probe_timeout(cli):
    """A server that accepts connections and never answers (a firewall's black hole looks the same
    to the client): bounded by the probe's timeout, not Ray's unbounded requests."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    th = threading.Thread(target=hold, daemon=True)
    th.start()
    try:
        port = srv.getsockname()[1]
        t = time.time()
        r = cli("submit", "--address", f"http://127.0.0.1:{port}", "--", "dsm", "demo")
        took = time.time() - t
    finally:
        stop.set()
        th.join()
        for c in held:
            c.close()
        srv.close()
    assert r.returncode == 2 and "within 3 s (timed out)" in r.stderr, r.stderr
    assert took < 20


def test_ray_client_address_is_refused_with_a_hint(cli):
    r = cli("jobs", "list", "--address", "ray://10.0.0.1:10001")
    assert r.returncode == 2 and "dashboard's HTTP address" in r.stderr
