"""Helpers for tests that start their own Ray processes: free ports, a short temp dir, and
cleanup of exactly the processes they started (never `ray stop`, which stops every Ray on the
machine, other people's included)."""

from __future__ import annotations

import os
import socket
import tempfile
import time
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
