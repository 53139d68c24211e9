"""Start or join Ray, the same way for every command (training, scoring, and later sweeps).

A running Ray in this process is reused (the tests' session cluster); ``address`` or
``$RAY_ADDRESS`` joins a cluster; otherwise a local Ray is started, sized to this machine,
with a bounded object store (the default takes a third of RAM; design.md section 8).
"""

from __future__ import annotations

import os

# No preemption watcher, and fail-fast worker startup. (The tests also speed up Ray Train's
# health checks; for real runs the default interval costs less CPU.)
LOCAL_RAY_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "60",
}
OBJECT_STORE_BYTES = 512 * 1024**2


def connect(address: str | None = None, *, log_to_driver: bool = True, check_local=None) -> None:
    """Reuse, join or start Ray. ``check_local``: called before a local Ray is started (to
    refuse work this machine cannot hold, before any process starts)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # A cluster's State API address, when the user gives it, reaches this job's workers
        # too (see pinned_dashboard: needed where several Rays share a machine).
        # (Not inside a Ray Job: its workers already share the driver's environment, and Ray
        # refuses a driver env var that the job's runtime_env may also set.)
        api = os.environ.get("RAY_API_SERVER_ADDRESS")
        in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        extra = {"runtime_env": {"env_vars": {"RAY_API_SERVER_ADDRESS": api}}} if api and not in_job else {}
        ray.init(address=address, log_to_driver=log_to_driver, **extra)
        return
    if check_local is not None:
        check_local()
    for k, v in LOCAL_RAY_ENV.items():
        os.environ.setdefault(k, v)
    ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=OBJECT_STORE_BYTES, log_to_driver=log_to_driver,
             configure_logging=True, logging_level="WARNING", **pinned_dashboard())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned_dashboard() -> dict:
    """``ray.init`` arguments for a local Ray whose own processes can find its State API.

    Ray Train V2's placement-group cleaner (an actor) looks the State API up by address
    "auto", which fails with "Found multiple active Ray instances" when another Ray runs on
    the same machine (a second sweep, a test cluster); the cleaner then dies and a Tune sweep
    hangs on its second trial, whose workers never get the first trial's CPUs back. So the
    dashboard gets a port chosen here, announced to this job's workers through
    RAY_API_SERVER_ADDRESS (which the State API client reads first) in the job's runtime_env;
    this process's own environment is left alone, so other Rays started from it are unaffected.
    """
    port = free_port()
    return {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port,
            "runtime_env": {"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}}}
