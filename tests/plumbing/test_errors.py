"""Every dsm exception survives pickling, as Ray needs to carry it from a worker to the driver."""

import importlib
import pickle
import pkgutil

import dsm
from dsm.data.shards import ShardError

# Modules that import Ray, MLflow or the CLI at import time are imported too: the test is about
# the classes they define, and importing is cheap.
MODULES = [m.name for m in pkgutil.walk_packages(dsm.__path__, "dsm.")]


def _dsm_exceptions():
    found = {}
    for name in MODULES:
        mod = importlib.import_module(name)
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__.startswith("dsm."):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_dsm_exception_round_trips_through_pickle():
    found = _dsm_exceptions()
    assert "dsm.data.shards.ShardError" in found and len(found) >= 6
    from dsm.plumbing.errors import BadInputFailure, JobFailed
    from dsm.plumbing.store import StoreError

    samples = {ShardError: ShardError("/data/train-000001.tar", "sha256 mismatch"),
               StoreError: StoreError("s3://b/train-000001.tar", "no such file or object"),
               JobFailed: JobFailed("ValueError: bad", "/runs/x/error.log", bad_input=True),
               BadInputFailure: BadInputFailure("/data/train-000001.tar: truncated", "Traceback ...")}
    for qualname, cls in found.items():
        err = samples.get(cls) or cls("one line naming the file")
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls and str(back) == str(err), qualname
        assert vars(back) == vars(err), qualname


def test_a_shard_error_keeps_its_path_and_message():
    back = pickle.loads(pickle.dumps(ShardError("/d/train-000003.tar", "truncated tar")))
    assert back.path == "/d/train-000003.tar" and back.message == "truncated tar"
    assert str(back) == "/d/train-000003.tar: truncated tar"



def test_hints_quote_paths_with_spaces(tmp_path):
    """A command printed for the user to paste must survive a path with spaces."""
    import shlex

    import torch

    from dsm.api import NotNormalized, from_energy
    from dsm.core import toy

    m = from_energy(toy.Gaussian(torch.zeros(2), torch.eye(2)), normalized=False)
    m.source = str(tmp_path / "my runs" / "model.pt")
    try:
        m.require_normalized()
    except NotNormalized as e:
        hint = str(e).split("`")[1]
    assert shlex.split(hint)[:2] == ["dsm", "normalize"] and shlex.split(hint)[2] == m.source


def test_the_short_cause_is_the_innermost_worker_error():
    """Ray Train's WorkerGroupError keeps each rank's exception in ``worker_failures`` (and Ray's
    task errors theirs in ``.cause``): the line shown is the worker's own dsm error."""
    from dsm.plumbing.errors import short_cause

    class WorkerGroupError(Exception):  # the attributes Ray's wrappers have; dsm.plumbing.errors needs no Ray
        def __init__(self, failures):
            super().__init__("Training failed due to worker errors:\n" + "\n".join(f"[Rank {r}] ..." for r in failures))
            self.worker_failures = failures

    class RayTaskError(Exception):
        def __init__(self, cause):
            super().__init__("ray::worker (pid=1)\n  File ...\n" + str(cause))
            self.cause = cause

    shard = ShardError("/data/train-000004.tar", "truncated tar (sample 17)")
    err = WorkerGroupError({1: RayTaskError(shard), 0: RayTaskError(RuntimeError("Connection closed by peer"))})
    assert short_cause(err) == "RuntimeError: Connection closed by peer"  # rank 0 first
    assert (short_cause(WorkerGroupError({1: RayTaskError(shard)}))
            == "/data/train-000004.tar: truncated tar (sample 17)")


class _RayTaskError(Exception):  # the attribute Ray's task errors have; dsm.plumbing.errors needs no Ray
    def __init__(self, cause):
        super().__init__("ray::worker (pid=1)\n  File ...\n" + f"{type(cause).__name__}: {cause}")
        self.cause = cause


def test_bad_input_in_any_rank_stops_the_run_and_other_errors_retry():
    """A worker's bad-input error (a shard corrupt at its full size) ends the run
    at once, whichever rank hit it, even when rank 0's error is the collateral of it; a lost worker
    or a torn-down collective is retried."""
    from dsm.plumbing.errors import BadInputFailure, bad_input_among, short_cause

    shard = ShardError("/data/train-000004.tar", "truncated tar (sample 17)")
    failure = bad_input_among({0: _RayTaskError(RuntimeError("Connection closed by peer")), 1: _RayTaskError(shard)})
    assert isinstance(failure, BadInputFailure)
    assert failure.cause == "/data/train-000004.tar: truncated tar (sample 17)"
    assert "ShardError" in failure.detail and "not retried" in str(failure)
    assert bad_input_among({0: _RayTaskError(RuntimeError("Connection closed by peer")),
                            1: _RayTaskError(OSError("node lost"))}) is None

    class ControllerError(Exception):  # what Ray Train raises for an exception in a callback
        def __init__(self, failure):
            super().__init__("Training failed due to controller error:\n" + str(failure))
            self.controller_failure = failure

    assert short_cause(ControllerError(failure)) == "/data/train-000004.tar: truncated tar (sample 17)"



def test_one_way_from_an_exception_to_an_exit_status(capsys):
    """dsm.plumbing.errors.exit_code, which dsm.cli.main runs every command through."""
    from pathlib import Path

    from dsm.plumbing.config import ConfigError
    from dsm.plumbing.errors import exit_code

    def fail(e):
        def run():
            raise e
        return run

    assert exit_code("score", lambda: 3) == 3
    assert exit_code("data prepare", fail(ConfigError("data.path: no such file"))) == 2
    assert capsys.readouterr().err.strip() == "dsm data prepare: data.path: no such file"
    assert exit_code("report", fail(FileNotFoundError("/x/scores.json"))) == 2
    assert exit_code("tune", fail(KeyboardInterrupt())) == 130
    capsys.readouterr()
    assert exit_code("tune", fail(RuntimeError("the GCS went away"))) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "dsm tune: RuntimeError: the GCS went away", err
    log = Path(err[-2].split("full traceback in ")[1])
    assert "Traceback" in log.read_text() and "the GCS went away" in log.read_text()
    log.unlink()


def test_a_failed_job_and_a_refusal_keep_their_own_status(capsys, tmp_path):
    from dsm.core.step import NonFiniteTraining
    from dsm.plumbing.errors import JobFailed, exit_code
    from dsm.plumbing.fileio import Busy

    def fail(e):
        def run():
            raise e
        return run

    log = tmp_path / "run dir" / "error.log"
    assert exit_code("train", fail(JobFailed("/d/train-000001.tar: truncated tar", log, bad_input=True))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dsm train: failed; full traceback in '{log}'", "dsm train: /d/train-000001.tar: truncated tar"]
    assert exit_code("score", fail(JobFailed("RuntimeError: actor died", log))) == 1
    assert exit_code("train", fail(NonFiniteTraining("3 non-finite steps in a row"))) == 3
    assert exit_code("train", fail(Busy("run 'x' is in use by pid 12"))) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "dsm train: run 'x' is in use by pid 12"


def test_messages_name_the_subcommand():
    from dsm.cli import build_parser, command_label, parse_args

    assert command_label(parse_args(build_parser(), ["data", "verify", "d"])) == "data verify"
    assert command_label(parse_args(build_parser(), ["import", "official", "a", "--out", "b"])) == "import official"
    assert command_label(parse_args(build_parser(), ["train", "c.yaml"])) == "train"
