"""The local Ray that dsm starts: who can reach it, and what is left of it after a killed driver.
The slow tests' Ray is started in a child process, with RAY_AUTH_MODE unset as a user's shell
has it (the test session disables it for its own cluster). One child serves both
(a local Ray's start is 5-10 s): the probe only asks and is refused, which leaves the child as it
was; the kill test, which ends it, comes last, and a test that finds it ended starts another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import psutil
import pytest

from dsm.runtime.cluster import reap_after

# The child: start Ray as `dsm train` does, run one actor (a worker process), report, then wait.
CHILD = """
import json, ray
from dsm.runtime.cluster import connect
connect(log_to_driver=False)
@ray.remote
class Echo:
    def pid(self):
        import os; return os.getpid()
echo = Echo.remote()
ray.get(echo.pid.remote())
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address}), flush=True)
import time; time.sleep(600)
"""


def _start_child(tmp_path) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["HOME"] = str(tmp_path)  # Ray writes its generated token to ~/.ray/auth_token
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)
    line = proc.stdout.readline()
    assert line, "the child did not start Ray"
    return proc, json.loads(line)["gcs"]


@pytest.fixture(scope="module")
def live_child(tmp_path_factory):
    """``live_child()``: (the module's child process, its GCS address), started on first use and
    again when a test has ended it; whatever is left is stopped after the module."""
    started: list[tuple[subprocess.Popen, str]] = []

    def live() -> tuple[subprocess.Popen, str]:
        if not started or started[-1][0].poll() is not None:
            started.append(_start_child(tmp_path_factory.mktemp("ray-home")))
        return started[-1]

    yield live
    for proc, _ in started:
        _stop(proc, _descendants(proc.pid) if proc.poll() is None else [])


def _descendants(pid: int) -> list[psutil.Process]:
    """The child's processes, the dsm watchdog left out (it is meant to outlive the child)."""
    out = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if "dsm.runtime.cluster" not in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {p.name()}")
        except psutil.Error:
            pass
    return out


def _stop(proc: subprocess.Popen, procs: list[psutil.Process]) -> None:
    proc.kill()
    proc.wait()
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def _listeners(procs: list[psutil.Process]) -> dict[int, str]:
    """port -> process name, for every socket the processes listen on beyond loopback."""
    out = {}
    for p in procs:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN and not c.laddr.ip.startswith(("127.", "::1")):
                    out[c.laddr.port] = p.name()
        except psutil.Error:
            pass
    return out


def _probe(host: str, port: int) -> list[str]:
    """What an unauthenticated client gets from ``port``: a gRPC call to each of Ray's GCS,
    raylet and worker services, and an HTTP GET. Each outcome is 'ok', 'denied', 'metrics'
    (Prometheus text) or another gRPC/HTTP status name."""
    import grpc
    from ray.core.generated import (
        core_worker_pb2,
        core_worker_pb2_grpc,
        gcs_service_pb2,
        gcs_service_pb2_grpc,
        node_manager_pb2,
        node_manager_pb2_grpc,
    )

    channel = grpc.insecure_channel(f"{host}:{port}")
    calls = [lambda: gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetAllNodeInfo(
                 gcs_service_pb2.GetAllNodeInfoRequest(), timeout=5),
             lambda: node_manager_pb2_grpc.NodeManagerServiceStub(channel).GetNodeStats(
                 node_manager_pb2.GetNodeStatsRequest(), timeout=5),
             lambda: core_worker_pb2_grpc.CoreWorkerServiceStub(channel).GetCoreWorkerStats(
                 core_worker_pb2.GetCoreWorkerStatsRequest(), timeout=5)]
    out = []
    for call in calls:
        try:
            call()
            out.append("ok")
        except grpc.RpcError as e:
            out.append("denied" if e.code() == grpc.StatusCode.UNAUTHENTICATED else e.code().name)
    channel.close()
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as r:
            out.append("metrics" if r.read(200).startswith(b"# HELP") else "ok")
    except urllib.error.HTTPError as e:
        out.append("denied" if e.code in (401, 403) else f"http {e.code}")
    except Exception as e:  # noqa: BLE001 - a gRPC port does not speak HTTP
        out.append(type(e).__name__)
    return out


@pytest.mark.slow
def test_a_local_ray_refuses_unauthenticated_clients(live_child):
    """Ray 2.60 cannot bind a local Ray to loopback (it maps 127.0.0.1 to the
    host's address), so its GCS, raylet and worker ports listen on the host's address; what must
    hold is that none of them serves a client without the cluster's token. The only answers to
    an unauthenticated client may be refusals, errors, or Prometheus's read-only metrics text."""
    proc, gcs = live_child()
    procs = _descendants(proc.pid)
    host, gcs_port = gcs.rsplit(":", 1)
    ports = _listeners(procs)
    assert int(gcs_port) in ports, ports
    outcomes = {port: _probe(host, port) for port in ports}
    assert outcomes[int(gcs_port)][0] == "denied", outcomes[int(gcs_port)]
    served = {port: (ports[port], o) for port, o in outcomes.items() if "ok" in o}
    assert not served, f"ports that served an unauthenticated client: {served}"
    denied = [port for port, o in outcomes.items() if "denied" in o]
    assert len(denied) >= 3, outcomes  # the GCS, the raylet and the actor's worker at least


@pytest.mark.slow
def test_a_killed_driver_leaves_no_ray_process(live_child):
    """SIGKILL the process that started a local Ray (as a killed `dsm train`
    or `dsm score`; Ctrl-C of `dsm train` also skips Ray's shutdown). Ray stops its GCS, raylet
    and workers itself, but its dashboard and runtime-env agents hang after saying they exit
    (over a minute here); dsm's watchdog stops them."""
    proc, _ = live_child()
    procs = _descendants(proc.pid)
    assert any(p.name() == "raylet" for p in procs), [p.name() for p in procs]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while _alive(procs) and time.time() < deadline:
        time.sleep(0.5)
    left = _alive(procs)
    _stop(proc, procs)
    assert not left, f"still running 30 s after the driver was killed: {left}"


def test_the_watchdog_stops_what_the_driver_left(tmp_path):
    """reap_after: the descendants of a dead driver that ignore SIGTERM are killed; the driver's
    normal exit with nothing left over stops nothing."""
    script = ("import subprocess, signal, sys, time\n"
              "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
              "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(600)'])\n"
              "time.sleep(600)\n")
    driver = subprocess.Popen([sys.executable, "-c", script])
    box = {}
    # term_s 0.2 (2 s in dsm): the orphan ignores SIGTERM, so it is SIGKILLed either way
    watcher = threading.Thread(target=lambda: box.update(stopped=reap_after(driver.pid, poll_s=0.1, grace_s=0.2,
                                                                            term_s=0.2)))
    watcher.start()
    deadline = time.time() + 20
    while not psutil.Process(driver.pid).children() and time.time() < deadline:
        time.sleep(0.1)
    orphan = psutil.Process(driver.pid).children()[0]
    time.sleep(1.0)  # the watcher has seen it
    driver.kill()
    driver.wait()
    watcher.join(30)
    assert box["stopped"] == [orphan.pid]
    assert not _alive([orphan])

    quiet = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    assert reap_after(quiet.pid, poll_s=0.1, grace_s=0.1) == []
    quiet.wait()
