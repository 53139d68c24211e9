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


def test_every_rank_reports_at_the_same_steps_and_the_last_step_always():
    """The report steps are a function of the config alone (so equal on every rank), and
    include the last step even when it is not a multiple of checkpoint.every."""
    from dsm.config import load_config
    from dsm.train.config import TrainConfig
    from dsm.train.loop import is_progress_step, is_report_step

    cfg = load_config(TrainConfig, "configs/digits-smoke.yaml", ["steps=250", "checkpoint.every=100", "log_every=30"])
    assert [s for s in range(1, 251) if is_report_step(cfg, s)] == [100, 200, 250]
    assert [s for s in range(1, 251) if is_progress_step(cfg, s)][-2:] == [240, 250]
