"""Real servers on 127.0.0.1 for the object-storage tests: moto's S3 server (the one s3fs's own
tests use) in its own process, and Python's http.server. No mocks: dsm talks to them through
s3fs/botocore and fsspec's HTTP client, as it would to a real bucket or web server."""

from __future__ import annotations

import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

# A secret that must never appear in a file, a param or a log line (tests/test_secrets.py).
SECRET = f"dsm-test-secret-{uuid.uuid4().hex}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def s3_env(port: int, config_dir: Path) -> dict[str, str]:
    """The standard AWS variables for an S3-compatible store at 127.0.0.1:port; config files
    point at empty ones so that the developer's ~/.aws never leaks into a test."""
    empty = config_dir / "aws-empty"
    empty.write_text("")
    return {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "dsm-test-key",
            "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(empty), "AWS_SHARED_CREDENTIALS_FILE": str(empty)}


class S3Server:
    """``moto_server`` in a child process; its request log goes to ``log``."""

    def __init__(self, port: int, log: Path):
        self.port, self.log = port, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=out, stderr=subprocess.STDOUT)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def make_bucket() -> str:
    """A new, empty bucket on the store the environment points at; returns ``s3://name``."""
    import s3fs

    name = f"dsm-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(name)
    return f"s3://{name}"


def upload(local: Path, url: str) -> None:
    """Copy a local folder's files (recursively) to ``url``."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    for f in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        fs.put_file(str(f), f"{root}/{f.relative_to(local).as_posix()}")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; the first ``fail_first`` GETs answer ``fail_status`` (a flaky server)."""

    def __init__(self, *args, state: dict, **kwargs):
        self.state = state
        super().__init__(*args, **kwargs)

    def do_GET(self):  # noqa: N802 - the http.server API
        with self.state["lock"]:
            fail = self.state["failed"] < self.state["fail_first"]
            self.state["failed"] += fail
            self.state["gets"] += 1
        if fail:
            self.send_error(self.state["fail_status"])
            return
        super().do_GET()

    def log_message(self, *args):  # keep the test output clean
        pass


class HTTPServer:
    """http.server on 127.0.0.1 serving ``root``, in a thread of this process."""

    def __init__(self, root: Path, fail_first: int = 0, fail_status: int = 503):
        self.state = {"lock": threading.Lock(), "failed": 0, "gets": 0, "fail_first": fail_first,
                      "fail_status": fail_status}
        handler = functools.partial(_Handler, directory=str(root), state=self.state)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HTTPServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_folder_process(root: Path, port: int) -> subprocess.Popen:
    """``python -m http.server`` in a child process (for Ray workers to read from)."""
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root),
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    wait_port(port)
    return proc
