"""The one driver sequence of ``dsm train``, ``dsm tune`` and ``dsm score`` (docs/design.md section 7).

1. join ``--address`` (or ``$RAY_ADDRESS``), or start a local Ray that holds the job;
2. check that the folder the workers write to is seen by every node (dsm.runtime.storage),
   and that the joined cluster can hold the job, waiting (bounded, and saying so) for one
   that grows (dsm.runtime.resources);
3. open the command's MLflow run, after the checks, so a refused job leaves no run behind;
4. run the job;
5. close the run: a failure as FAILED with its cause (the full traceback in the job's
   ``error.log``), Ctrl-C as KILLED with how to resume. A finished run is closed by the job
   itself, which knows what to log on it.

Errors leave as :class:`dsm.plumbing.errors.JobFailed` (one-line cause, traceback file, whether the
input was at fault) or :class:`dsm.plumbing.errors.Interrupted` (how to resume), which
:func:`dsm.plumbing.errors.exit_code` turns into the exit status the same way for every command.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from dsm.runtime.resources import DEFAULT_TIMEOUT_S, Demand

T = TypeVar("T")


@dataclass(frozen=True)
class Job:
    """What a driver runs, and where. ``storage``: where the workers write (checkpoints, parts;
    None: nowhere, their results come back through Ray);
    ``error_log``: where a failure's full traceback goes; ``resume_hint``: said on Ctrl-C;
    ``check_local``: called before a local Ray starts, to refuse what this machine cannot
    hold; ``check_cluster``: called once Ray is joined, to refuse what the cluster cannot hold;
    ``log_to_driver``: show the workers' output; ``demand``: the workers or actors the job
    places, secured once Ray is joined (dsm.runtime.resources: the cluster can hold them, they
    are placed within ``resource_timeout_s``, and their GPUs have CUDA)."""

    command: str
    address: str | None
    storage: str | Path | None
    error_log: Path
    resume_hint: str
    check_local: Callable[[], None] | None = None
    check_cluster: Callable[[], None] | None = None
    log_to_driver: bool = True
    demand: Demand | None = None
    resource_timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass(frozen=True)
class Tracking:
    """The job's MLflow run: ``open()`` gives its id (None when tracking is off or unreachable);
    ``closes_itself``: failures the job has already recorded on the run (left alone here)."""

    uri: str
    open: Callable[[], str | None]
    closes_itself: tuple[type[BaseException], ...] = ()


NO_TRACKING = Tracking("", lambda: None)


def drive(job: Job, work: Callable[[str | None], T], tracking: Tracking = NO_TRACKING) -> T:
    """Steps 1 to 5 above around ``work(run_id)``; returns what it returns."""
    from dsm.plumbing.errors import (
        BadInputFailure,
        Interrupted,
        JobFailed,
        innermost,
        is_bad_input,
        short_cause,
        write_traceback,
    )
    from dsm.runtime.cluster import connect
    from dsm.runtime.resources import secure
    from dsm.runtime.storage import check_cluster_storage
    from dsm.runtime.tracking import close_run

    connect(job.address, log_to_driver=job.log_to_driver, check_local=job.check_local)
    if job.storage is not None:
        check_cluster_storage(job.storage)
    if job.check_cluster is not None:
        job.check_cluster()
    if job.demand is not None:
        secure(job.command, job.demand, job.resource_timeout_s)
    run_id = tracking.open()
    try:
        return work(run_id)
    except tracking.closes_itself:
        raise
    except KeyboardInterrupt:
        close_run(tracking.uri, run_id, "KILLED", f"interrupted; {job.resume_hint}", job.command)
        raise Interrupted(job.resume_hint) from None
    except Exception as e:  # noqa: BLE001 - every other way out closes the run and keeps the traceback
        cause = short_cause(e)
        close_run(tracking.uri, run_id, "FAILED", cause, job.command)
        bad_input = isinstance(innermost(e), BadInputFailure) or is_bad_input(e)
        raise JobFailed(cause, write_traceback(e, job.error_log), bad_input) from e


def gpu_task(job: Job, fn: Callable[..., T], *args, cpus: float = 1.0) -> T:
    """``fn(*args)`` in one Ray task that holds a GPU, through :func:`drive` (join or start Ray,
    secure the GPU and check its CUDA, failures as one line): GPU work of a command that is not
    itself a Ray job (``dsm normalize --gpu``, the consistency checks of ``dsm score --gpu``),
    which would otherwise run on the driver's CPU. ``fn`` and ``args`` must pickle."""
    import dataclasses

    import ray

    from dsm.runtime.cluster import check_local_gpus
    from dsm.runtime.resources import RESOURCE_TIMEOUT_FLAG, Demand

    per = {"CPU": cpus, "GPU": 1.0}
    job = dataclasses.replace(job, demand=Demand(per, 1, unit="GPU task", timeout_field=RESOURCE_TIMEOUT_FLAG),
                              check_local=job.check_local or (lambda: check_local_gpus(1, "--gpu")))
    return drive(job, lambda _: ray.get(ray.remote(fn).options(num_cpus=cpus, num_gpus=1).remote(*args)))
