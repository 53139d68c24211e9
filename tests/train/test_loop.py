"""The worker loop's console hygiene (the loop itself runs in tests/train/test_run.py)."""

import functools
import logging
from itertools import islice

import pytest
import torch

from dsm.runtime.console import quiet_ray_train_logs


class Lines(logging.Handler):
    """Collects each record as the console would print it (message, and traceback if any)."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


def test_ray_train_report_lines_are_silenced():
    """Train V2 logs each report at INFO through a logger named by its file path."""
    from ray.train.v2._internal.execution import context

    report_logger = logging.getLogger(context.__file__)
    report_logger.setLevel(logging.INFO)
    quiet_ray_train_logs()
    assert not report_logger.isEnabledFor(logging.INFO)
    assert not logging.getLogger("ray.train").isEnabledFor(logging.INFO)


def test_ray_train_tracebacks_are_dropped_other_errors_kept():
    """The per-rank "Error in training function" page and the controller's
    teardown warning are dropped (dsm prints the cause in one line); other errors still show."""
    import ray.train.v2._internal.callbacks.backend_setup as backend_setup
    import ray.train.v2._internal.util as util

    quiet_ray_train_logs()
    for module in (util, backend_setup):
        log = logging.getLogger(module.__name__)
        assert log.filters, module.__name__
    log, teardown = logging.getLogger(util.__name__), logging.getLogger(backend_setup.__name__)
    handler = Lines()
    for lg in (log, teardown):
        lg.addHandler(handler)
    try:
        log.error("Error in training function:\nTraceback ...")
        teardown.warning("Graceful shutdown of backend failed. This is expected if one of the workers has crashed.")
        log.error("something else broke")
    finally:
        for lg in (log, teardown):
            lg.removeHandler(handler)
    assert handler.lines == ["something else broke"]


def test_ray_trains_transient_overload_warning_is_one_line():
    """Ray Train's controller logs "Failed to send resource request" with the traceback of a
    timed-out ray.get when the CPU is overloaded: the line stays, the traceback goes."""
    from ray.train.v2._internal.execution.scaling_policy import autoscaling_coordinator_client as client

    quiet_ray_train_logs()
    log = logging.getLogger(client.__name__)
    handler = Lines()
    log.addHandler(handler)
    try:
        try:
            raise TimeoutError("Get timed out: some object(s) not ready.")
        except TimeoutError:
            log.warning("Failed to send resource request for train-x. It's safe to ignore this error.", exc_info=True)
            log.warning("the coordinator is gone", exc_info=True)
    finally:
        log.removeHandler(handler)
    assert handler.lines[0] == "Failed to send resource request for train-x. It's safe to ignore this error."
    assert "Traceback" in handler.lines[1]  # other warnings keep theirs


def test_every_rank_reports_at_the_same_steps_and_the_last_step_always():
    """The report steps are a function of the config alone (so equal on every rank), and
    include the last step even when it is not a multiple of checkpoint.every."""
    from dsm.plumbing.config import load_config
    from dsm.train.config import TrainConfig
    from dsm.train.loop import is_progress_step, is_report_step

    cfg = load_config(TrainConfig, "configs/digits-smoke.yaml", ["steps=250", "checkpoint.every=100", "log_every=30"])
    assert [s for s in range(1, 251) if is_report_step(cfg, s)] == [100, 200, 250]
    assert [s for s in range(1, 251) if is_progress_step(cfg, s)][-2:] == [240, 250]


def _record_start(path, worker_id: int) -> None:
    torch.set_num_threads(1)
    with open(path, "a") as f:
        f.write(f"{worker_id}\n")


@pytest.mark.parametrize("workers", [1, 2])
def test_training_batches_cross_epochs_and_resume_as_before_with_workers_started_once(tmp_path, monkeypatch, workers):
    """train_batches over an epoch boundary, from the start and from a resumed step, gives the
    batches that one fresh loader per epoch gave (as before loader workers persisted), and its
    loader workers start once. 5 batches per epoch: with 2 workers one yields 3, the other 2."""
    import dsm.data.stream as stream_module
    from dsm.core.units import to_unit_float
    from dsm.data.stream import TrainStream
    from dsm.train.loop import train_batches
    from tests.data._util import write_shards

    write_shards(tmp_path / "train", 83, shard_size=10)

    def stream():
        return TrainStream(tmp_path / "train", batch_size=6, seed=4, flips=True, batches_per_epoch=5, shuffle_buffer=16)

    before = []  # per epoch a new DataLoader (workers not persistent) and the loader's old k/255
    for epoch in range(3):
        s = stream()
        s.set_epoch(epoch)
        for b in torch.utils.data.DataLoader(s, batch_size=None, num_workers=workers):
            before.append((b["key"], b["label"], b["x"].float().div_(255.0)))
    starts = tmp_path / "starts"
    monkeypatch.setattr(stream_module, "_one_thread", functools.partial(_record_start, starts))
    for start in (0, 3, 7):  # fresh, resumed mid-epoch 0, resumed mid-epoch 1
        got = list(islice(train_batches(stream(), workers, start), 15 - start))
        assert len(got) == len(before[start:])
        for (keys, labels, x), b in zip(before[start:], got):
            assert b["key"] == keys and torch.equal(b["label"], labels) and b["x"].dtype == torch.uint8
            assert torch.equal(to_unit_float(b["x"]).view(torch.int32), x.view(torch.int32))
        assert sorted(starts.read_text().split()) == [str(i) for i in range(workers)], "once, not per epoch"
        starts.unlink()


def test_the_console_is_quiet_from_each_worker_process_start():
    """Ray runs the setup hook in every worker process of a dsm job before any of Ray Train's
    modules is imported: a logger made afterwards (the controller's autoscaling client) is still
    filtered, through the handlers every record passes."""
    import importlib

    from dsm.runtime import cluster, console

    assert cluster.pinned_dashboard()["runtime_env"]["worker_process_setup_hook"] == console.SETUP_HOOK
    module, name = console.SETUP_HOOK.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name) is quiet_ray_train_logs
    ray_logger = logging.getLogger("ray")
    handler = Lines()
    ray_logger.addHandler(handler)
    try:
        quiet_ray_train_logs()
        later = logging.getLogger("ray.train.v2.made.after.the.hook")
        try:
            raise TimeoutError("Get timed out")
        except TimeoutError:
            later.warning("Failed to cancel resource request for train-y.", exc_info=True)
            later.warning("Error in training function:\nTraceback ...")
            later.warning("kept", exc_info=True)
    finally:
        ray_logger.removeHandler(handler)
    assert handler.lines[0] == "Failed to cancel resource request for train-y."
    assert len(handler.lines) == 2 and handler.lines[1].startswith("kept") and "Traceback" in handler.lines[1]


def test_the_transient_warning_is_one_line_after_ray_train_configures_its_loggers():
    """Ray Train's controller configures ``ray.train`` (new console handlers, no propagation)
    after the setup hook has run, and imports its autoscaling client later still: the warning
    that client logs on a busy machine still reaches the new console without its traceback."""
    import logging.config

    quiet_ray_train_logs()  # as the setup hook, at the process start
    train_logger = logging.getLogger("ray.train")
    saved = (train_logger.handlers[:], train_logger.propagate, train_logger.level)
    ray_trains_config = {"level": "DEBUG", "handlers": ["console"], "propagate": False}
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False,
                               "handlers": {"console": {"()": Lines}}, "loggers": {"ray.train": ray_trains_config}})
    console = train_logger.handlers[0]
    try:
        client = logging.getLogger("ray.train.v2.imported.after.the.configuration")
        try:
            raise TimeoutError("Get timed out")
        except TimeoutError:
            client.warning("Failed to send resource request for train-z. It's safe to ignore this error.",
                           exc_info=True)
            client.warning("kept", exc_info=True)
    finally:
        train_logger.handlers[:], train_logger.propagate = saved[0], saved[1]
        train_logger.setLevel(saved[2])
    assert console.lines[0] == "Failed to send resource request for train-z. It's safe to ignore this error."
    assert console.lines[1].startswith("kept") and "Traceback" in console.lines[1]
