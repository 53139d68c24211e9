"""Is a run's storage path visible from every node? Checked at startup by ``dsm train`` (and ``dsm tune``).

Ray Train writes checkpoints from each worker's node to ``storage_path`` and reads them back
on whichever node restarts the run; on a multi-node cluster a node-local folder silently
splits a run's checkpoints across machines, and a restart resumes from nothing. So when more
than one node is alive, the path must be cloud storage (``s3://``, ``gs://``, ...) or a
folder the operator *declares* shared (NFS, EFS, Filestore, a CSI volume) by setting the
environment variable ``DSM_SHARED_STORAGE=1`` on the driver: in the shell, in the job's
runtime_env (``dsm submit`` forwards it), or in the RayJob/RayCluster spec. The declaration
is an environment variable rather than a config field because it is a property of the
cluster, not of the run: it must not change a run's fingerprint (and so its name).

Usage from a driver that has joined Ray (this is all ``dsm train`` does)::

    from dsm.runtime.storage import check_cluster_storage
    check_cluster_storage(storage_path)      # raises dsm.plumbing.config.ConfigError

The pure check, :func:`check_shared_storage`, needs no Ray and is what the tests call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dsm.plumbing.config import ConfigError

SHARED_ENV = "DSM_SHARED_STORAGE"
STORAGE_ENV = "DSM_STORAGE"  # default of `dsm train|tune --storage`: where runs keep checkpoints and exports
# URI schemes whose storage every node reaches the same way (pyarrow.fs / fsspec names).
SHARED_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "az", "hdfs", "viewfs")
_TRUE = {"1", "true", "yes", "on"}


def is_shared_uri(storage_path: str | Path) -> bool:
    """True for cloud/distributed storage URIs (``s3://bucket/x``, ``gs://...``)."""
    s = str(storage_path)
    scheme, sep, _ = s.partition("://")
    return bool(sep) and scheme.lower() in SHARED_SCHEMES


def shared_storage_declared(env: Mapping[str, str] | None = None) -> bool:
    """True when ``$DSM_SHARED_STORAGE`` says local paths are shared by every node (1/true/yes/on)."""
    env = os.environ if env is None else env
    return env.get(SHARED_ENV, "").strip().lower() in _TRUE


def check_shared_storage(storage_path: str | Path, nodes_alive: int, declared_shared: bool | None = None) -> None:
    """Raise ConfigError when ``storage_path`` is node-local on a multi-node cluster.

    ``nodes_alive``: the cluster's alive nodes (:func:`alive_nodes`). ``declared_shared``:
    the operator's declaration; None reads ``$DSM_SHARED_STORAGE``. One node, a cloud URI, or
    a declared-shared path pass.
    """
    if declared_shared is None:
        declared_shared = shared_storage_declared()
    if nodes_alive <= 1 or declared_shared or is_shared_uri(storage_path):
        return
    raise ConfigError(
        f"storage path {str(storage_path)!r} is local to one machine, but the Ray cluster has {nodes_alive} "
        "alive nodes: checkpoints written on one node would be invisible to the others, and a restarted "
        "run would lose them. Put the workspace (--workspace / $DSM_WORKSPACE) on a file system mounted at "
        "the same path on every node (NFS, EFS, Filestore, a ReadWriteMany volume) and declare it with "
        f"{SHARED_ENV}=1; s3:// and gs:// storage paths pass as they are.")


def storage_root(given: str | None = None) -> str | None:
    """Where runs and sweeps keep their checkpoints and exports: ``given`` (``--storage``), else
    ``$DSM_STORAGE``, as an absolute path or a URL; None: under the workspace. An HTTP URL is
    refused (dsm.plumbing.store.StoreError, one line) before anything starts."""
    from dsm.plumbing.store import writable_location

    root = given or os.environ.get(STORAGE_ENV) or None
    return writable_location(root, "--storage" if given else f"${STORAGE_ENV}").url if root else None


def alive_nodes() -> int:
    """Alive nodes of the Ray cluster this process has joined (``ray.nodes()``)."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def check_cluster_storage(storage_path: str | Path) -> None:
    """:func:`check_shared_storage` for the joined Ray cluster and ``$DSM_SHARED_STORAGE``."""
    check_shared_storage(storage_path, alive_nodes(), shared_storage_declared())
