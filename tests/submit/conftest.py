"""A real Ray head of our own, for job submission: `ray start --head --block` in its own process
group, temp dir and ports, stopped by that handle (never `ray stop`, which would stop every
Ray on the machine, other people's test clusters included)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.procs import free_ports, kill_leftovers, short_tmp

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


class LocalHead:
    """A one-node Ray cluster on 127.0.0.1 with the dashboard (and so the job server) on."""

    def __init__(self, num_cpus: int = 2):
        # Short: Ray's unix sockets live under the temp dir and paths are limited to 107 bytes.
        self.tmp = short_tmp("dsmh")
        (gcs, dash, client, agent_http, agent_grpc, nm, om, metrics, rte) = free_ports(9)
        self.dashboard_url = f"http://127.0.0.1:{dash}"
        self.gcs_address = f"127.0.0.1:{gcs}"
        self.env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    # RAY_TMPDIR: the "current cluster" address file goes to our dir, not /tmp/ray,
                    # so nobody's ray.init() on this machine finds this cluster.
                    "RAY_TMPDIR": str(self.tmp), "OMP_NUM_THREADS": "1",
                    # Ray's State API (used by Train's placement-group cleaner) otherwise scans for
                    # GCS processes and fails when it finds several clusters on this machine.
                    "RAY_API_SERVER_ADDRESS": self.dashboard_url}
        for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "DSM_WORKSPACE"):
            self.env.pop(k, None)
        cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
               f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
               f"--dashboard-agent-grpc-port={agent_grpc}", f"--node-manager-port={nm}",
               f"--object-manager-port={om}", f"--metrics-export-port={metrics}",
               f"--runtime-env-agent-port={rte}",
               f"--num-cpus={num_cpus}", "--num-gpus=0", f"--object-store-memory={200 * 1024**2}",
               f"--temp-dir={self.tmp}", "--include-dashboard=true", "--disable-usage-stats"]
        self.log = open(self.tmp / "head.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True, cwd=self.tmp)

    def wait_ready(self, timeout: float = 120) -> None:
        """Until the job server answers (the dashboard comes up some seconds after the GCS)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}: {(self.tmp / 'head.log').read_text()}")
            try:
                with urllib.request.urlopen(self.dashboard_url + "/api/jobs/", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"job server not up in {timeout} s: {(self.tmp / 'head.log').read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM our process group, then SIGKILL whatever of ours is left (found by our temp dir)."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:  # the dashboard, raylet and workers go within half a second; `ray start --block` and
            # one more often outlive SIGTERM for good (waiting 5 s here only delayed the SIGKILL)
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        self.leftovers = kill_leftovers(str(self.tmp), pgid=self.proc.pid)
        self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head():
    head = LocalHead()
    try:
        head.wait_ready()
        yield head
    finally:
        head.stop()
