"""Start or join Ray, the same way for every command (training, scoring, and later sweeps).

A running Ray in this process is reused (the tests' session cluster); ``address`` or
``$RAY_ADDRESS`` joins a cluster; otherwise a local Ray is started, sized to this machine,
with a bounded object store (the default takes a third of RAM; docs/design.md section 8).
"""

from __future__ import annotations

import os

from dsm.runtime.console import SETUP_HOOK

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
        # refuses a driver env var that the job's runtime_env may also set.) Every worker process
        # of the job quiets Ray Train's console from its start (dsm.runtime.console).
        api = os.environ.get("RAY_API_SERVER_ADDRESS")
        in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        env = {"worker_process_setup_hook": SETUP_HOOK}
        if api:
            env["env_vars"] = {"RAY_API_SERVER_ADDRESS": api}
        extra = {} if in_job else {"runtime_env": env}
        ray.init(address=address, log_to_driver=log_to_driver, **extra)
        return
    if check_local is not None:
        check_local()
    for k, v in LOCAL_RAY_ENV.items():
        os.environ.setdefault(k, v)
    # A local Ray's GCS, raylet and worker gRPC servers listen beyond loopback (Ray maps
    # 127.0.0.1 to the host's address); its token authentication, on by default for a new local
    # Ray since 2.5x, is what keeps other hosts out (tests/runtime/test_cluster.py checks the ports).
    # Setting the mode here would not do: Ray reads it once, at import.
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    if mode.lower() != "token":
        import sys

        print(f"dsm: warning: RAY_AUTH_MODE={mode}: the local Ray's ports accept unauthenticated "
              "clients from other hosts", file=sys.stderr)
    ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=OBJECT_STORE_BYTES, log_to_driver=log_to_driver,
             configure_logging=True, logging_level="WARNING", **pinned_dashboard())
    start_reaper()


def check_local_gpus(needed: int, field: str) -> None:
    """Before a local Ray starts for a job that asks for ``needed`` GPUs: this machine must have
    them (a local Ray offers exactly its own CUDA devices). With a cluster the check is the
    cluster's (dsm.runtime.resources), and the driver's own CUDA does not matter."""
    from dsm.plumbing.config import ConfigError

    if os.environ.get("RAY_ADDRESS"):
        return  # joining a cluster after all: connect() does not start a local Ray
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < needed:
        raise ConfigError(f"{field}: {needed} GPU(s) asked, but this machine has {have} usable CUDA device(s) "
                          f"and no --address was given; drop --gpu, or give --address of a GPU cluster")


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
            "runtime_env": {"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"},
                            "worker_process_setup_hook": SETUP_HOOK}}


# The local Ray's processes that outlive a killed driver: Ray 2.60's dashboard and runtime-env
# agents notice the raylet's death and log that they exit, then hang (seen for over a minute,
# docs/reliability.md). The reaper watches the driver from its own session and stops them.
REAPER_GRACE_S = 3.0  # Ray's own fate-sharing stops the GCS, raylet and workers within about a second


def start_reaper() -> None:
    """Start ``python -m dsm.runtime.cluster PID``: a watchdog (psutil only, no Ray or torch) that
    outlives this process, for a driver that started a local Ray. SIGKILL or ``os._exit`` of the
    driver skips Ray's own shutdown; the watchdog then stops what is left of it."""
    import subprocess
    import sys

    subprocess.Popen([sys.executable, "-m", "dsm.runtime.cluster", str(os.getpid())], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def reap_after(driver_pid: int, poll_s: float = 1.0, grace_s: float = REAPER_GRACE_S,
               term_s: float = 2.0) -> list[int]:
    """Wait for ``driver_pid`` to exit, remembering its descendants meanwhile (Ray starts
    workers as it goes); then, after ``grace_s``, SIGTERM and, ``term_s`` later, SIGKILL those
    still running. Returns the pids it had to stop."""
    import time

    import psutil

    seen: dict[int, psutil.Process] = {}
    try:
        driver = psutil.Process(driver_pid)
        while driver.status() != psutil.STATUS_ZOMBIE:
            seen.update((c.pid, c) for c in driver.children(recursive=True) if c.pid != os.getpid())
            time.sleep(poll_s)
    except psutil.NoSuchProcess:
        pass
    time.sleep(grace_s)
    left = [p for p in seen.values() if p.is_running()]  # is_running also checks the start time (pid reuse)
    for p in left:
        _signal(p, "terminate")
    _, alive = psutil.wait_procs(left, timeout=term_s)  # the hung agents ignore SIGTERM
    for p in alive:
        _signal(p, "kill")
    psutil.wait_procs(alive, timeout=2)
    return [p.pid for p in left]


def _signal(proc, how: str) -> None:
    import psutil

    try:
        getattr(proc, how)()
    except psutil.Error:
        pass


if __name__ == "__main__":
    import sys

    reap_after(int(sys.argv[1]))
