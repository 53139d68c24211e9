"""The one driver sequence (dsm.runtime.driver.drive) on the session's real Ray and a real MLflow
store: checks before the run is opened, and every way out recorded on the run."""

import pytest
from mlflow.tracking import MlflowClient

from dsm.core.step import NonFiniteTraining
from dsm.plumbing.config import ConfigError
from dsm.plumbing.errors import Interrupted, JobFailed
from dsm.runtime.driver import Job, Tracking, drive
from dsm.runtime.tracking import open_run, tracking_uri


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One SQLite MLflow store for the module: creating one (its schema migrations) costs seconds."""
    ws = tmp_path_factory.mktemp("driver-mlflow")
    return tracking_uri(ws), ws


@pytest.fixture
def store(shared_store, tmp_path):
    """The shared store, with run names of this test's own (open_run resumes a run of the same
    name), so each test sees only the runs it opened."""
    uri, ws = shared_store
    opened = []

    def open_() -> str:
        opened.append(open_run("driver-test", f"{tmp_path.name}-run-{len(opened)}", uri, ws, {}, {}))
        return opened[-1]

    return uri, opened, open_


def _job(tmp_path, **kw) -> Job:
    return Job("test", None, storage=tmp_path, error_log=tmp_path / "job" / "error.log",
               resume_hint="re-run it", **kw)


def _status(uri: str, run_id: str) -> tuple[str, dict]:
    run = MlflowClient(uri).get_run(run_id)
    return run.info.status, run.data.tags


def test_a_refused_job_opens_no_run(ray_cluster, tmp_path, store):
    uri, opened, open_ = store

    def too_small():
        raise ConfigError("resources: one trial needs 4 CPUs, but 2 are available")

    with pytest.raises(ConfigError, match="4 CPUs"):
        drive(_job(tmp_path, check_cluster=too_small), lambda run_id: 1, Tracking(uri, open_))
    assert opened == []


def test_a_finished_job_returns_what_it_made(ray_cluster, tmp_path, store):
    uri, opened, open_ = store
    assert drive(_job(tmp_path), lambda run_id: ("made", run_id), Tracking(uri, open_)) == ("made", opened[0])
    assert _status(uri, opened[0])[0] == "RUNNING"  # the job closes a finished run itself, with what it logs


@pytest.mark.parametrize("error, bad_input", [(ValueError("/d/x.tar: truncated tar"), True),
                                              (RuntimeError("the actor died"), False)])
def test_a_failure_is_one_line_a_log_and_a_failed_run(ray_cluster, tmp_path, store, error, bad_input):
    uri, opened, open_ = store

    def work(run_id):
        raise error

    with pytest.raises(JobFailed) as caught:
        drive(_job(tmp_path), work, Tracking(uri, open_))
    e = caught.value
    assert e.bad_input is bad_input and str(error) in e.cause
    assert e.log == tmp_path / "job" / "error.log" and "Traceback" in e.log.read_text()
    status, tags = _status(uri, opened[0])
    assert status == "FAILED" and str(error) in tags["dsm.failure"]


def test_ctrl_c_closes_the_run_as_killed_with_how_to_resume(ray_cluster, tmp_path, store):
    uri, opened, open_ = store

    def work(run_id):
        raise KeyboardInterrupt

    with pytest.raises(Interrupted) as caught:
        drive(_job(tmp_path), work, Tracking(uri, open_))
    assert caught.value.hint == "re-run it"
    status, tags = _status(uri, opened[0])
    assert status == "KILLED" and tags["dsm.failure"] == "interrupted; re-run it"


def test_a_failure_the_job_recorded_itself_is_left_alone(ray_cluster, tmp_path, store):
    uri, opened, open_ = store

    def work(run_id):
        raise NonFiniteTraining("3 non-finite steps in a row")

    with pytest.raises(NonFiniteTraining):
        drive(_job(tmp_path), work, Tracking(uri, open_, closes_itself=(NonFiniteTraining,)))
    status, tags = _status(uri, opened[0])
    assert status == "RUNNING" and "dsm.failure" not in tags
