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


def test_runs_carry_their_source_and_experiments_their_kind(tmp_path):
    from mlflow.tracking import MlflowClient

    from dsm.runtime.tracking import child_run, git_state, open_run

    uri = tracking_uri(tmp_path)
    rid = open_run("dsm-train", "r1", uri, tmp_path, {}, {}, command="train")
    client = MlflowClient(uri)
    tags = client.get_run(rid).data.tags
    sha, dirty = git_state()
    assert tags["mlflow.source.name"] == "dsm train" and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.git.dirty"] == str(dirty).lower()
    assert sha == "unknown" or tags["mlflow.source.git.commit"] == sha  # a checkout: the commit
    exp = client.get_experiment_by_name("dsm-train")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    child = client.get_run(child_run(client, rid, "dsm-score", tmp_path, "s", "score"))
    assert child.data.tags["mlflow.parentRunId"] == rid and child.data.tags["mlflow.source.name"] == "dsm score"


def test_a_dataset_input_names_its_source_digest_and_shape(tmp_path):
    import json

    from mlflow.tracking import MlflowClient

    from dsm.data.inputs import open_input
    from dsm.runtime.tracking import log_dataset
    from tests.data._util import write_shards

    folder = tmp_path / "digits" / "train"
    write_shards(folder, 30, shard_size=10)
    client = MlflowClient(tracking_uri(tmp_path))
    exp = use_experiment("x", tmp_path, client)
    runs = [client.create_run(exp).info.run_id for _ in range(2)]
    inp = open_input(folder)
    for rid in runs:
        log_dataset(client, rid, inp, "training")
    got = [client.get_run(r).inputs.dataset_inputs for r in runs]
    assert [len(g) for g in got] == [1, 1]
    a, b = got[0][0], got[1][0]
    assert a.dataset.digest == b.dataset.digest == inp.digest()[:16]  # same data, same digest
    assert a.dataset.name == "digits/train" and str(folder) in a.dataset.source
    assert {(t.key, t.value) for t in a.tags} == {("mlflow.data.context", "training")}
    assert json.loads(a.dataset.profile) == {"num_samples": 30, "shape": list(inp.shape), "dtype": "uint8",
                                             "format": "shards"}
