"""What Ray Train prints on the driver's console: the progress lines and one line per failure.

Ray Train logs every report at INFO, a page of traceback per rank for a failure that dsm
reports in one line (and keeps whole in the job's error.log), and, when its controller's
autoscaling coordinator answers late on a busy machine, a warning with the traceback of a
timed-out ``ray.get``. :func:`quiet_ray_train_logs` keeps the console to what a user needs. It
runs in every worker process of a dsm job from the start (Ray's ``worker_process_setup_hook``,
:data:`SETUP_HOOK`, which :func:`dsm.runtime.cluster.connect` sets), and again where a process
may have been started otherwise (inside a Ray Job).
"""

from __future__ import annotations

import logging
import os

# Ray Train's pages of traceback for a failure that dsm reports in one line: each rank's "Error
# in training function" (the surviving rank's, when another was killed), and the controller's
# teardown of a dead group.
RAY_TRAIN_TRACEBACKS = ("Error in training function", "Graceful shutdown of backend failed")
# Warnings that the controller logs with a traceback when its autoscaling coordinator answers
# late (in Ray's own words, safe to ignore when the CPU is overloaded, as on a busy head node):
# kept as the one line they say, without the traceback.
RAY_TRAIN_TRANSIENT = ("Failed to send resource request", "Failed to cancel resource request")
SETUP_HOOK = f"{__name__}.quiet_ray_train_logs"  # Ray imports it by this path in each worker process


def console_filter(record: logging.LogRecord) -> bool:
    """False for the tracebacks above."""
    return not str(record.msg).startswith(RAY_TRAIN_TRACEBACKS)


def _without_transient_tracebacks(make_record):
    """A log record factory that makes the transient warnings without their traceback.

    A factory, not a filter: Ray Train's controller configures its loggers (``dictConfig``) after
    the setup hook has run, with new console handlers and without propagation past ``ray.train``,
    so no filter that the hook could attach sees the records of a module imported later."""

    def make(*args, **kwargs):
        record = make_record(*args, **kwargs)
        if str(record.msg).startswith(RAY_TRAIN_TRANSIENT):
            record.exc_info, record.exc_text = None, None
        return record

    make.strips_transient_tracebacks = True
    return make


def quiet_ray_train_logs() -> None:
    """Raise Ray Train's loggers to WARNING and filter what reaches the console.

    Ray Train's loggers carry their own levels, so each one that exists is raised and filtered;
    some are named by their file path (``logging.getLogger(__file__)``, as Train V2's report
    logger is). Loggers made later (a module imported after this runs) are reached through the
    handlers of the ``ray`` and root loggers, which every record passes on its way out."""
    path_part = f"{os.sep}ray{os.sep}train{os.sep}"
    for name in ["ray.train", *[n for n in logging.root.manager.loggerDict
                                if n.startswith("ray.train") or path_part in n]]:
        log = logging.getLogger(name)
        log.setLevel(logging.WARNING)
        if console_filter not in log.filters:
            log.addFilter(console_filter)
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "strips_transient_tracebacks", False):
        logging.setLogRecordFactory(_without_transient_tracebacks(factory))
    for handler in [*logging.getLogger("ray").handlers, *logging.getLogger().handlers]:
        if console_filter not in handler.filters:
            handler.addFilter(console_filter)
