"""Submission ids and the job's runtime_env, without a cluster."""

from pathlib import Path

import pytest

from dsm.submit.client import is_local, resolve_address
from dsm.submit.ids import attempt_of, decide, submission_base
from dsm.submit.runtime_env import SubmitError, build_runtime_env, entrypoint, normalize_command

REPO = Path(__file__).resolve().parents[2]


def test_ids_are_deterministic_and_depend_on_command_files_and_workspace():
    a = submission_base(["train", "configs/x.yaml", "steps=10"], {"configs/x.yaml": "aa"}, "/ws")
    assert a == submission_base(["train", "configs/x.yaml", "steps=10"], {"configs/x.yaml": "aa"}, "/ws")
    assert a.startswith("dsm-train-") and len(a) == len("dsm-train-") + 12
    assert a != submission_base(["train", "configs/x.yaml", "steps=11"], {"configs/x.yaml": "aa"}, "/ws")
    assert a != submission_base(["train", "configs/x.yaml", "steps=10"], {"configs/x.yaml": "bb"}, "/ws")
    assert a != submission_base(["train", "configs/x.yaml", "steps=10"], {"configs/x.yaml": "aa"}, "/ws2")


def test_attach_while_active_resubmit_with_suffix_after_failure():
    b = "dsm-train-0123456789ab"
    assert decide(b, {}) == ("submit", b)
    assert decide(b, {"other": "RUNNING", b + "x": "FAILED"}) == ("submit", b)
    assert decide(b, {b: "RUNNING"}) == ("attach", b)
    assert decide(b, {b: "PENDING"}) == ("attach", b)
    assert decide(b, {b: "FAILED"}) == ("submit", b + "-r1")
    assert decide(b, {b: "FAILED", b + "-r1": "STOPPED"}) == ("submit", b + "-r2")
    assert decide(b, {b: "FAILED", b + "-r1": "RUNNING"}) == ("attach", b + "-r1")
    assert decide(b, {b: "SUCCEEDED"}) == ("attach", b)
    assert decide(b, {b: "SUCCEEDED"}, rerun=True) == ("submit", b + "-r1")
    assert decide(b, {b: "RUNNING"}, rerun=True) == ("attach", b)  # never two copies at once
    assert attempt_of(b, b + "-r10") == 10 and attempt_of(b, b + "-r0") is None and attempt_of(b, "x") is None


def test_command_files_are_rewritten_into_the_working_dir_and_hashed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outside.yaml").write_text("steps: 1\n")
    cmd = normalize_command(["dsm", "train", "configs/digits-smoke.yaml", "outside.yaml", "steps=3", "--gpu"],
                            REPO, local=False)
    assert cmd.argv == ["train", "configs/digits-smoke.yaml", str(tmp_path / "outside.yaml"), "steps=3", "--gpu"]
    assert set(cmd.file_digests) == {"configs/digits-smoke.yaml", str(tmp_path / "outside.yaml")}
    assert any("outside the uploaded project" in w for w in cmd.warnings)
    assert entrypoint(cmd.argv).startswith("python -m dsm.cli train configs/digits-smoke.yaml ")
    with pytest.raises(SubmitError, match="no command"):
        normalize_command(["dsm"], REPO, local=True)


def test_runtime_env_local_cluster_shares_workspace_and_sqlite_store(tmp_path):
    ws = tmp_path / "ws"
    renv, env, warnings = build_runtime_env(REPO, local=True, workspace=str(ws), environ={})
    assert renv["working_dir"] == str(REPO) and "pip" not in renv
    assert {".venv/", ".git/", "dsm-runs/", "*.pt", "mlruns/"} <= set(renv["excludes"])
    assert env == {"DSM_WORKSPACE": str(ws.resolve()), "MLFLOW_TRACKING_URI": f"sqlite:///{ws.resolve()}/mlflow.db"}
    assert renv["env_vars"] == env and not warnings
    renv, _, _ = build_runtime_env(REPO, local=True, workspace=str(ws), env_pip=True, environ={})
    assert any(r.startswith("ray[") for r in renv["pip"]) and any(r.startswith("mlflow") for r in renv["pip"])


def test_runtime_env_remote_cluster_warns_about_file_stores():
    _, env, warnings = build_runtime_env(REPO, local=False, workspace="/shared/dsm-runs",
                                            environ={"MLFLOW_TRACKING_URI": "sqlite:///x.db",
                                                     "DSM_SHARED_STORAGE": "1"})
    assert env == {"DSM_WORKSPACE": "/shared/dsm-runs", "MLFLOW_TRACKING_URI": "sqlite:///x.db",
                   "DSM_SHARED_STORAGE": "1"}
    assert any("local file store but the cluster is remote" in w for w in warnings)
    _, env, warnings = build_runtime_env(REPO, local=False, environ={"MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    assert env == {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}  # the workspace: the cluster's own
    assert any("no --workspace" in w for w in warnings) and not any("file store" in w for w in warnings)
    with pytest.raises(SubmitError, match="absolute path"):
        build_runtime_env(REPO, local=False, workspace="relative/ws", environ={})


def test_addresses():
    assert resolve_address("10.0.0.5:8265", {}) == "http://10.0.0.5:8265"
    assert resolve_address(None, {"RAY_ADDRESS": "https://ray.example.com/"}) == "https://ray.example.com"
    assert resolve_address("http://a:1", {"RAY_ADDRESS": "http://b:2"}) == "http://a:1"  # the flag wins
    with pytest.raises(SubmitError, match="no cluster address"):
        resolve_address(None, {})
    assert is_local("http://127.0.0.1:8265") and is_local("http://localhost:1")
    assert not is_local("http://10.255.1.2:8265")


def test_the_upload_holds_code_not_data_outputs_or_secrets(tmp_path):
    """Data shards, scores, arrays, a non-default workspace and .env files stay here;
    .dsmignore adds or re-includes, but never re-includes a secret; an oversized upload is
    refused naming its biggest paths."""
    from dsm.submit.runtime_env import check_upload, upload_excludes, upload_size

    files = {"pyproject.toml": 10, "dsm/cli.py": 100, "configs/a.yaml": 10, "data/imagenet/train-000000.tar": 5000,
             "scores/parts/part-000000.parquet": 3000, "x.npy": 2000, ".env": 10, "cluster/mlflow/.env": 10,
             ".env.example": 10, "my-ws/mlflow.db": 4000, "my-ws/runs/r/state.pt": 4000, "my-ws/notes.txt": 10,
             "data/tiny/README": 10, "big/blob.bin": 3 * 2**20}
    for rel, n in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * n)
    (tmp_path / ".dsmignore").write_text("# ours\nbig/\n!x.npy\n!.env\n")
    total, biggest = upload_size(tmp_path, upload_excludes(tmp_path))
    shipped = {p for _, p in biggest}
    assert shipped == {"pyproject.toml", "dsm/", "configs/", ".env.example", ".dsmignore", "x.npy"}, shipped
    assert total == 10 + 100 + 10 + 10 + 2000 + len((tmp_path / ".dsmignore").read_bytes())
    (tmp_path / ".dsmignore").unlink()
    with pytest.raises(SubmitError) as e:
        check_upload(tmp_path, upload_excludes(tmp_path), limit_mb=1)
    assert "big/ (3.0 MB)" in str(e.value) and ".dsmignore" in str(e.value)


def test_runtime_env_forwards_where_runs_live_but_never_credentials():
    environ = {"DSM_STORAGE": "s3://b/runs", "DSM_ARTIFACT_ROOT": "s3://b/mlflow", "AWS_ACCESS_KEY_ID": "AKIA",
               "AWS_SECRET_ACCESS_KEY": "sekrit", "AWS_ENDPOINT_URL": "http://minio:9000",
               "GOOGLE_APPLICATION_CREDENTIALS": "/k.json", "MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    _, env, _ = build_runtime_env(REPO, local=False, workspace="/shared/ws", environ=environ)
    assert env == {"DSM_WORKSPACE": "/shared/ws", "MLFLOW_TRACKING_URI": "http://mlflow:5000",
                   "DSM_STORAGE": "s3://b/runs", "DSM_ARTIFACT_ROOT": "s3://b/mlflow"}
