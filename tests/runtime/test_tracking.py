"""MLflow defaults: the workspace's SQLite store unless the user sets MLFLOW_TRACKING_URI."""

import os

from dsm.runtime.tracking import tracking_uri, use_experiment


def test_a_second_workspace_in_the_same_process_gets_its_own_store(tmp_path, monkeypatch):
    # MLflow's own set_tracking_uri writes $MLFLOW_TRACKING_URI; dsm must not then mistake it
    # for the user's choice and send the next workspace's runs to the first one's store.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a, b = tmp_path / "a", tmp_path / "b"
    use_experiment("x", a)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert tracking_uri(b) == f"sqlite:///{b.resolve() / 'mlflow.db'}"
    assert (a / "mlflow.db").is_file()


def test_the_users_tracking_uri_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'shared.db'}")
    use_experiment("x", tmp_path / "ws")
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'shared.db'}"
    assert tracking_uri(tmp_path / "other") == f"sqlite:///{tmp_path / 'shared.db'}"
