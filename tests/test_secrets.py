"""A secret in the environment never reaches a file, an MLflow param or tag, or a log line.

dsm trains from and into a bucket and scores into it, as two real CLI processes, each with its
own local Ray whose temporary folder (every Ray log) is the test's. The AWS secret access key
these processes authenticate with (tests/servers.py: SECRET) is then searched for in everything
they left: the workspace (the SQLite store holds every param, tag and metric), Ray's logs, every
object in the bucket, and the two commands' console output.

Processes, not ``dsm.cli.main`` here: each command must start a local Ray of its own whose
folder is the test's (RAY_TMPDIR is read when Ray starts; in this process the session's Ray
would be reused, its logs elsewhere), and the output searched is the processes' whole stdout and
stderr (Ray's own lines included), not only what Python's sys.stdout carries.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from dsm.plumbing.config import load_config
from dsm.plumbing.store import Location
from dsm.train.build import resolve_data
from dsm.train.config import TrainConfig
from tests import servers

REPO = Path(__file__).resolve().parents[1]


def _files_holding(secret: bytes, *roots: Path) -> list[str]:
    return [str(f) for root in roots for f in root.rglob("*")
            if f.is_file() and not f.is_symlink() and secret in f.read_bytes()]


def _objects_holding(secret: bytes, bucket: str) -> list[str]:
    import s3fs

    fs = s3fs.S3FileSystem()
    return [key for key in fs.find(bucket.removeprefix("s3://")) if secret in fs.cat_file(key)]


def _dsm(*args: str, env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "dsm.cli", *args], env=env, cwd=REPO, capture_output=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    return out


@pytest.mark.slow  # about a minute and a half: two commands, each starting its own Ray
def test_the_s3_secret_reaches_no_file_param_or_log(digits_workspace, bucket, tmp_path):
    secret = servers.SECRET.encode()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == servers.SECRET  # what the commands authenticate with
    smoke = resolve_data(load_config(TrainConfig, REPO / "configs" / "digits-smoke.yaml"), digits_workspace,
                         progress=False)
    servers.upload(Path(smoke.data.path).parent, f"{bucket}/digits")
    ws = tmp_path / "ws"
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = dict(os.environ, DSM_WORKSPACE=str(ws), RAY_TMPDIR=str(ray_tmp), DSM_ARTIFACT_ROOT=f"{bucket}/mlflow")
    train = _dsm("train", "configs/digits-smoke.yaml", "data.dataset=null", f"data.path={bucket}/digits/train",
                 "steps=10", "checkpoint.every=10", "log_every=5", "scaling.workers=1", "eval.samples=64",
                 # consistency off: 3 s of numbers (metrics under fixed keys); the grid and every other
                 # artifact, param and log line are still written and searched
                 "eval.consistency=false", "--storage", f"{bucket}/runs", "--quiet", env=env)
    model = train.stdout.decode().strip().splitlines()[-1]
    # One t and 2 noise draws (the defaults: 5 and 4): the same parts, figures, params and logs, a
    # tenth of the arithmetic; what is searched is what the job writes, not how much it computed.
    score = _dsm("score", model, "--data", f"{bucket}/digits/test", "--out", f"{bucket}/scores", "--actors", "1",
                 "--t-grid", "0.1", "--noise-samples", "2", "--consistency-samples", "0", env=env)

    # the search can find it: a planted copy is found, in a file and in an object
    (tmp_path / "planted").write_bytes(b"x" + secret + b"y")
    assert _files_holding(secret, tmp_path) == [str(tmp_path / "planted")]
    (tmp_path / "planted").unlink()
    Location.of(f"{bucket}/planted").write_bytes(secret)
    assert _objects_holding(secret, bucket) == [f"{bucket[5:]}/planted"]
    Location.of(f"{bucket}/planted").remove()
    assert Location.of(f"{bucket}/scores").listing()  # the commands did write there

    assert sum(1 for f in ray_tmp.rglob("*") if f.suffix in (".log", ".out", ".err")) > 10  # Ray's logs are here
    assert _files_holding(secret, ws, ray_tmp) == []
    assert _objects_holding(secret, bucket) == []
    for out in (train, score):
        assert secret not in out.stdout + out.stderr
