"""MLflow logging from rank 0: no duplicated steps across restarts; an unreachable server never stops training."""

import time

from mlflow.tracking import MlflowClient

from dsm.runtime.tracking import flatten, open_run, tracking_uri
from dsm.train.runlog import MARKER, RunLog


def test_flush_after_restart_never_duplicates_steps(tmp_path):
    uri = tracking_uri(tmp_path)
    run_id = open_run("exp", "r1", uri, tmp_path, {"a.b": "1"}, {"dsm.git_commit": "abc"})
    log = RunLog(run_id, uri)
    assert log.resume() == -1
    log.flush([(s, {"train/loss": float(s)}) for s in range(1, 11)])

    again = open_run("exp", "r1", uri, tmp_path, {}, {})  # the same name finds the same run
    assert again == run_id
    restarted = RunLog(again, uri)
    assert restarted.resume() == 10
    restarted.flush([(s, {"train/loss": float(s)}) for s in range(5, 16)])  # 5..10 were logged before

    client = MlflowClient(uri)
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == list(range(1, 16))
    assert max(m.step for m in client.get_metric_history(run_id, MARKER)) == 15
    run = client.get_run(run_id)
    assert run.data.params == {"a.b": "1"} and run.data.tags["dsm.git_commit"] == "abc"


def test_unreachable_tracking_server_is_reported_not_fatal(tmp_path, capsys):
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    t0 = time.time()
    assert open_run("exp", "r", dead, tmp_path, {}, {}) is None
    log = RunLog("0" * 32, dead)
    log.flush([(1, {"train/loss": 1.0})])
    log.flush([(2, {"train/loss": 2.0})])  # already off: no second attempt, no second message
    log.artifact(tmp_path)
    assert not log.enabled
    assert time.time() - t0 < 60
    err = capsys.readouterr().err
    assert "unavailable" in err and "training goes on" in err
    assert err.count("MLflow logging failed") == 1


def test_flatten_nested_config():
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2], "f": {}}) == \
        {"a.b": "1", "a.c.d": "None", "e": "[1, 2]", "f": "{}"}
