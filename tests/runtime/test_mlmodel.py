"""A dsm bundle as an MLflow model (dsm.runtime.mlmodel), on a real SQLite MLflow store: logged
once per file, registered, fetched by models:/ URI, and loaded by mlflow.pyfunc with the same
numbers as dsm.api.load."""

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import dsm.api
from dsm.cli import main
from dsm.core.bundle import save_bundle
from dsm.plumbing.fileio import sha256_file
from dsm.runtime import mlmodel
from dsm.runtime.tracking import tracking_uri, use_experiment
from tests.models import perturbed_smoke_unet


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A digits-smoke UNet energy with random weights (so U is not trivially 0) and a log Z."""
    model, cfg = perturbed_smoke_unet()
    return save_bundle(tmp_path_factory.mktemp("model") / "model.pt", model, cfg, (1, 8, 8), True,
                       normalization={"value": 3.0, "stderr": 0.1, "t": 1e3, "n": 10})


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An empty MLflow SQLite store, its schema made once for the module (the migrations are most
    of a new store's cost); each test gets a copy of it."""
    folder = tmp_path_factory.mktemp("empty-store")
    MlflowClient(tracking_uri(folder)).search_experiments()  # creates and migrates mlflow.db
    return folder / "mlflow.db"


@pytest.fixture
def store(empty_store, tmp_path):
    import shutil

    shutil.copyfile(empty_store, tmp_path / "mlflow.db")  # a store of its own: the tests stay independent
    client = MlflowClient(tracking_uri(tmp_path))
    run_id = client.create_run(use_experiment("dsm-train", tmp_path, client), run_name="r").info.run_id
    return client, run_id


def test_a_bundle_is_logged_once_registered_and_loads_with_the_same_log_p(bundle, store, tmp_path):
    client, run_id = store
    sha = sha256_file(bundle)
    model_id = mlmodel.log_bundle(client, run_id, bundle, sha)
    assert mlmodel.log_bundle(client, run_id, bundle, sha) == model_id  # a re-run logs nothing new
    assert [o.model_id for o in client.get_run(run_id).outputs.model_outputs] == [model_id]
    assert mlmodel.register(client, "digits", model_id, run_id) == 1
    assert mlmodel.register(client, "digits", model_id, run_id) == 1  # the same bundle: no second version
    client.set_registered_model_alias("digits", "best", "1")

    local, info = mlmodel.fetch_bundle(client, "models:/digits/1", tmp_path / "cache")
    assert sha256_file(local) == sha and info["run_id"] == run_id and info["version"] == "1"
    assert mlmodel.fetch_bundle(client, "models:/digits@best", tmp_path / "cache")[0] == local

    import mlflow.artifacts
    import mlflow.pyfunc

    folder = mlflow.artifacts.download_artifacts(artifact_uri=client.get_model_version_download_uri("digits", "1"),
                                                 dst_path=str(tmp_path / "pyfunc"))
    files = {p.name for p in (tmp_path / "pyfunc").rglob("*")}
    assert "pyfunc_entry.py" in files and not any(f.endswith(".pkl") for f in files)  # nothing to unpickle
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    got = mlflow.pyfunc.load_model(folder).predict(x.numpy())
    want = dsm.api.load(bundle)
    np.testing.assert_allclose(got["logp_nats"], want.log_prob(x).numpy(), rtol=1e-6)
    np.testing.assert_allclose(got["nll_bpd"], want.nll(x).numpy(), rtol=1e-6)
    np.testing.assert_allclose(got["energy_nats"], want.energy(x, 0.0).numpy(), rtol=1e-5)
    assert got["logp_nats"].std() > 0  # not a constant: the numbers mean something


@pytest.mark.parametrize("uri, says", [("models:/nope/1", "no such registered model version"),
                                       ("models:/digits", "models:/NAME/VERSION"),
                                       ("models:/digits/7", "no such registered model version")])
def test_a_model_uri_that_resolves_to_nothing_is_named(bundle, store, tmp_path, uri, says):
    client, run_id = store
    mlmodel.register(client, "digits", mlmodel.log_bundle(client, run_id, bundle, sha256_file(bundle)), run_id)
    with pytest.raises(ValueError, match=says) as e:
        mlmodel.fetch_bundle(client, uri, tmp_path / "cache")
    assert uri in str(e.value)


def test_dsm_score_refuses_an_unknown_registered_model_in_one_line(tmp_path, capsys):
    data = tmp_path / "x.npy"
    np.save(data, np.zeros((4, 64), np.float32))
    rc = main(["score", "models:/nope/3", "--data", str(data), "--out", str(tmp_path / "out"),
               "--workspace", str(tmp_path / "ws")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("dsm score: models:/nope/3: no such"), err


@pytest.mark.parametrize("name", ["", "a/b", "a@b", " a"])
def test_a_registered_name_that_would_not_round_trip_is_refused_before_ray(name, capsys):
    assert main(["train", "configs/digits-smoke.yaml", "--register", name]) == 2
    assert "--register" in capsys.readouterr().err


@pytest.mark.slow
def test_a_trained_run_shows_its_data_and_model_and_is_scored_by_its_registered_name(registered_run, capsys):
    """The model registry's round trip: `dsm train --register` -> the registry -> `dsm score models:/...`
    and mlflow.pyfunc, with equal log p, and the lineage on every run."""
    from mlflow.entities import LoggedModelStatus

    from dsm.data.inputs import iter_examples, open_input
    from dsm.scoring.job import read_scores

    ws, export = registered_run
    client = MlflowClient(tracking_uri(ws))
    (train_run,) = client.search_runs([client.get_experiment_by_name("dsm-train").experiment_id])
    cfg = dsm.api.load(export)
    data = {i.tags[0].value: i.dataset for i in train_run.inputs.dataset_inputs}
    train_data = open_input(next((ws / "data").glob("digits*/train")))
    assert set(data) == {"training", "evaluation"} and data["training"].digest == train_data.digest()[:16]
    (out,) = train_run.outputs.model_outputs
    lm = client.get_logged_model(out.model_id)
    assert lm.status == LoggedModelStatus.READY and lm.tags[mlmodel.SHA_TAG] == sha256_file(export)
    (mv,) = client.search_model_versions("name = 'digits'")
    assert int(mv.version) == 1 and mv.run_id == train_run.info.run_id

    held = str(ws / "data" / train_data.path.parent.name / "test")
    scores = ws / "scores"
    assert main(["score", "models:/digits/1", "--data", held, "--out", str(scores), "--t-grid", "",
                 "--consistency-samples", "0", "--workspace", str(ws)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(scores / "parts")
    (run,) = client.search_runs([client.get_experiment_by_name("dsm-train").experiment_id],
                                "tags.`dsm.model_uri` = 'models:/digits/1'")
    assert run.data.tags["mlflow.parentRunId"] == train_run.info.run_id
    # (search_runs leaves model inputs out; get_run has them)
    assert [m.model_id for m in client.get_run(run.info.run_id).inputs.model_inputs] == [out.model_id]
    assert [(i.dataset.name, i.tags[0].value) for i in run.inputs.dataset_inputs] == [
        (f"{train_data.path.parent.name}/test", "scoring")]

    import mlflow.artifacts
    import mlflow.pyfunc

    folder = mlflow.artifacts.download_artifacts(artifact_uri=client.get_model_version_download_uri("digits", "1"),
                                                 dst_path=str(ws / "pyfunc"))
    keys, x, _ = next(iter_examples(open_input(held), 16))
    table = read_scores(scores).to_pandas().set_index("key")
    got = mlflow.pyfunc.load_model(folder).predict(x)
    np.testing.assert_allclose(got["logp_nats"], table.loc[keys, "logp_nats"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(got["logp_nats"], cfg.log_prob(torch.from_numpy(x)).numpy(), rtol=1e-6)
