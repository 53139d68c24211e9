"""The worker loop's console hygiene (the loop itself runs in tests/train/test_run.py)."""

import logging

from dsm.train.loop import quiet_ray_train_logs


def test_ray_train_report_lines_are_silenced():
    """Train V2 logs each report at INFO through a logger named by its file path."""
    from ray.train.v2._internal.execution import context

    report_logger = logging.getLogger(context.__file__)
    report_logger.setLevel(logging.INFO)
    quiet_ray_train_logs()
    assert not report_logger.isEnabledFor(logging.INFO)
    assert not logging.getLogger("ray.train").isEnabledFor(logging.INFO)


def test_ray_train_tracebacks_are_dropped_other_errors_kept():
    """Issue #17 item 15b: the per-rank "Error in training function" page and the controller's
    teardown warning are dropped (dsm prints the cause in one line); other errors still show."""
    import ray.train.v2._internal.callbacks.backend_setup as backend_setup
    import ray.train.v2._internal.util as util

    quiet_ray_train_logs()
    for module in (util, backend_setup):
        log = logging.getLogger(module.__name__)
        assert log.filters, module.__name__
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    log, teardown = logging.getLogger(util.__name__), logging.getLogger(backend_setup.__name__)
    handler = Keep()
    for lg in (log, teardown):
        lg.addHandler(handler)
    try:
        log.error("Error in training function:\nTraceback ...")
        teardown.warning("Graceful shutdown of backend failed. This is expected if one of the workers has crashed.")
        log.error("something else broke")
    finally:
        for lg in (log, teardown):
            lg.removeHandler(handler)
    assert seen == ["something else broke"]
