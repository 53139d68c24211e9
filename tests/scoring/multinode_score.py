"""Run by tests/scoring/test_remote.py in a subprocess of its own (it must own its Ray: the
pytest process may already hold the session's ray.init, and one process joins one cluster).

A simulated 2-node cluster (``ray.cluster_utils.Cluster``): a 1-CPU head that hosts the
driver, and a 1-CPU worker node. ``dsm score`` must refuse a node-local --out there (the
parts would be scattered over the nodes' disks) and take an ``s3://`` one. The S3 server's
address and credentials come in the environment (tests/conftest.py), which the nodes inherit.
Prints one JSON line. Usage: multinode_score.py MODEL DATA LOCAL_OUT S3_OUT WORKSPACE
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def score(argv: list[str]) -> tuple[int, str, str]:
    """``dsm score ARGV`` in this process (it reuses the connected cluster): (status, stdout, stderr)."""
    from dsm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["score", *argv])
    return rc, out.getvalue(), err.getvalue()


def run(model: str, data: str, local_out: str, s3_out: str, ws: str) -> dict:
    from dsm.runtime.storage import alive_nodes
    from tests.procs import simulated_cluster

    out: dict = {}
    with simulated_cluster(head_cpus=1, worker_nodes=1):
        out["nodes_alive"] = alive_nodes()
        common = ["--data", data, "--t-grid", "0.1", "--noise-samples", "2", "--consistency-samples", "0",
                  "--workspace", ws]
        os.environ.pop("DSM_SHARED_STORAGE", None)
        out["local_rc"], _, out["local_err"] = score([model, *common, "--out", local_out])
        rc, stdout, err = score([model, *common, "--out", s3_out])
        out.update(s3_rc=rc, s3_err=err[-3000:], s3_last_line=(stdout.strip().splitlines() or [""])[-1])
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    result = run(*sys.argv[1:6])
    print("RESULT " + json.dumps(result), flush=True)
