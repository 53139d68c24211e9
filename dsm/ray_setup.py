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
        ray.init(address=address, log_to_driver=log_to_driver)
        return
    if check_local is not None:
        check_local()
    for k, v in LOCAL_RAY_ENV.items():
        os.environ.setdefault(k, v)
    ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=OBJECT_STORE_BYTES, log_to_driver=log_to_driver,
             configure_logging=True, logging_level="WARNING")
