"""The worker loop's console hygiene (the loop itself runs in tests/train/test_run.py)."""

import logging

from dsm.train.loop import _quiet_ray_train_logs


def test_ray_train_report_lines_are_silenced():
    """Train V2 logs each report at INFO through a logger named by its file path."""
    from ray.train.v2._internal.execution import context

    report_logger = logging.getLogger(context.__file__)
    report_logger.setLevel(logging.INFO)
    _quiet_ray_train_logs()
    assert not report_logger.isEnabledFor(logging.INFO)
    assert not logging.getLogger("ray.train").isEnabledFor(logging.INFO)
