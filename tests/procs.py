"""Helpers for tests that start their own Ray processes: free ports, a short temp dir, and
cleanup of exactly the processes they started (never `ray stop`, which stops every Ray on the
machine, other people's included)."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def short_tmp(prefix: str) -> Path:
    """A temp dir under /tmp with a short path: Ray's unix sockets live below it (107-byte limit)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def processes_of(marker: str, pgid: int | None = None) -> list[psutil.Process]:
    """Processes whose command line mentions ``marker`` (our temp dir) or in process group ``pgid``."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if (pgid is not None and os.getpgid(p.pid) == pgid) or marker in " ".join(p.info["cmdline"] or []):
                out.append(p)
        except (psutil.Error, OSError):
            pass
    return out


def kill_leftovers(marker: str, pgid: int | None = None, timeout: float = 10) -> list[str]:
    """SIGKILL what is left of ours; returns the command lines that were still running."""
    seen: list[str] = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        left = processes_of(marker, pgid)
        if not left:
            break
        for p in left:
            try:
                seen.append(" ".join(p.cmdline())[:200])
                p.kill()
            except psutil.Error:
                pass
        time.sleep(0.5)
    return seen


@contextmanager
def simulated_cluster(head_cpus: int, worker_nodes: int) -> Iterator[tuple[object, list]]:
    """A ``ray.cluster_utils.Cluster`` that this process joins: a head of ``head_cpus`` CPUs with
    the dashboard (Ray Train's State API needs it), and ``worker_nodes`` 1-CPU nodes. Yields
    (cluster, nodes); leaves Ray and the cluster shut down."""
    from ray.cluster_utils import Cluster

    dash, agent = free_ports(2)
    # Ray's State API (Train's placement-group cleaner uses it) finds "the" cluster by scanning
    # for GCS processes when no address is set, and fails when it sees several: point it at ours.
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dash}"
    cluster = Cluster(initialize_head=True, connect=True,
                      head_node_args={"num_cpus": head_cpus, "include_dashboard": True, "dashboard_host": "127.0.0.1",
                                      "dashboard_port": dash, "dashboard_agent_listen_port": agent,
                                      "object_store_memory": 100 * 1024**2})
    try:
        nodes = [cluster.add_node(num_cpus=1, object_store_memory=100 * 1024**2) for _ in range(worker_nodes)]
        cluster.wait_for_nodes()
        yield cluster, nodes
    finally:
        import ray

        ray.shutdown()  # the driver first: Cluster refuses to remove the node it is connected to
        cluster.shutdown()


def run_cluster_driver(script: Path, *args: str, timeout: float = 900) -> tuple[dict, subprocess.CompletedProcess]:
    """``python SCRIPT ARGS`` in a subprocess that owns its simulated cluster (the pytest process
    may hold the session's ray.init, and a process joins one cluster), with a RAY_TMPDIR of its
    own whose processes are killed afterwards. The script prints ``RESULT <json>`` last; returns
    (that JSON, the finished process)."""
    import json
    import shutil
    import sys

    repo = Path(__file__).resolve().parents[1]
    tmp = short_tmp("dsmc")
    env = {**os.environ, "RAY_TMPDIR": str(tmp), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", "DSM_WORKSPACE", "DSM_SHARED_STORAGE"):
        env.pop(k, None)
    try:
        proc = subprocess.run([sys.executable, str(script), *args], check=False, capture_output=True, text=True,
                              env=env, cwd=repo, timeout=timeout)
    finally:
        kill_leftovers(str(tmp))
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(lines[-1][len("RESULT "):]), proc
