"""Talking to a cluster's Job Submission server (the dashboard's HTTP address).

Ray's ``JobSubmissionClient`` sends requests without a timeout (an unroutable address hangs
for minutes) and lets ``$RAY_ADDRESS`` override an explicit address; :func:`connect` therefore
resolves the address itself, probes ``/api/version`` with a short timeout, and builds the
client for exactly that URL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import TextIO
from urllib.parse import urlparse

from dsm.submit.runtime_env import SubmitError

PROBE_TIMEOUT_S = 3.0
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def resolve_address(address: str | None, environ: dict[str, str] | None = None) -> str:
    """``--address``, else ``$RAY_ADDRESS``, as ``http(s)://host:port`` (http when no scheme)."""
    environ = os.environ if environ is None else environ
    addr = (address or environ.get("RAY_ADDRESS") or "").strip()
    if not addr:
        raise SubmitError("no cluster address: give --address http://HEAD:8265 (the Ray dashboard) "
                          "or set RAY_ADDRESS")
    if addr.startswith("ray://") or addr == "auto":
        raise SubmitError(f"address {addr!r}: give the Ray dashboard's HTTP address (e.g. http://HEAD:8265), "
                          "not a Ray Client or GCS address")
    if "://" not in addr:
        addr = "http://" + addr
    u = urlparse(addr)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise SubmitError(f"address {addr!r} is not an http(s)://host:port URL")
    return addr.rstrip("/")


def is_local(url: str) -> bool:
    """True when the dashboard runs on this machine (loopback, or this host's name or address)."""
    host = urlparse(url).hostname or ""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        if host == "localhost":
            return True
    names = {socket.gethostname(), socket.getfqdn()}
    if host in names:
        return True
    try:
        return host == socket.gethostbyname(socket.gethostname())
    except OSError:
        return False


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str:
    """GET ``url/api/version`` within ``timeout`` seconds; returns the cluster's Ray version."""
    try:
        with urllib.request.urlopen(url + "/api/version", timeout=timeout) as r:
            return json.loads(r.read().decode())["ray_version"]
    except urllib.error.HTTPError as e:
        raise SubmitError(f"{url} answered HTTP {e.code} {e.reason} to /api/version: not a Ray dashboard; check "
                          "--address / $RAY_ADDRESS (the head's dashboard, port 8265 by default)") from None
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            reason = "timed out"
        raise SubmitError(f"cannot reach a Ray dashboard at {url} within {timeout:g} s ({reason}); check "
                          "--address / $RAY_ADDRESS: the head's dashboard HTTP address, port 8265 by default "
                          "(`ray start --head --dashboard-host=0.0.0.0`, or a port-forward)") from None


@contextmanager
def _only_address(url: str):
    """Ray's client reads $RAY_API_SERVER_ADDRESS first: point it at ``url`` while building one."""
    old = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = url
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = old


def connect(address: str | None):
    """A ``JobSubmissionClient`` for ``address`` / ``$RAY_ADDRESS``, after a bounded reachability probe."""
    url = resolve_address(address)
    probe(url)
    import logging

    from ray.job_submission import JobSubmissionClient

    logging.getLogger("ray").setLevel(logging.WARNING)  # per-file upload notes drown our own lines
    # "'.git' is now ignored by default": we exclude it (and more) ourselves (runtime_env.EXCLUDES).
    logging.getLogger("ray._private.runtime_env.working_dir").setLevel(logging.ERROR)
    with _only_address(url):
        try:
            return JobSubmissionClient(url)
        except (ConnectionError, RuntimeError) as e:
            raise SubmitError(f"{url}: {e}") from None


def job_info(client, submission_id: str):
    """The job's JobDetails; SubmitError when the cluster has no such job."""
    try:
        return client.get_job_info(submission_id)
    except RuntimeError as e:
        if "404" in str(e) or "does not exist" in str(e):
            raise SubmitError(f"no job {submission_id!r} on this cluster (`dsm jobs list` shows them)") from None
        raise


def statuses(client) -> dict[str, str]:
    """``{submission id: status}`` of the cluster's submitted jobs."""
    return {j.submission_id: str(j.status) for j in client.list_jobs() if j.submission_id}


def wait(client, submission_id: str, out: TextIO = sys.stdout, poll_s: float = 1.0) -> str:
    """Poll until the job is terminal, printing each status change; returns the final status."""
    last = None
    while True:
        info = client.get_job_info(submission_id)
        status = str(info.status)
        if status != last:
            print(f"job {submission_id}: {status}" + (f" ({info.message})" if info.message else ""), file=out,
                  flush=True)
            last = status
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def follow(client, submission_id: str, out: TextIO = sys.stdout) -> str:
    """Stream the job's logs until it ends (Ray's async tail, run to completion here); returns
    the final status."""

    async def _tail() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            out.write(chunk)
            out.flush()

    asyncio.run(_tail())
    # The log stream closes when the job ends; its status is written a moment later.
    deadline = time.time() + 30
    status = str(client.get_job_status(submission_id))
    while status not in TERMINAL and time.time() < deadline:
        time.sleep(0.5)
        status = str(client.get_job_status(submission_id))
    return status
