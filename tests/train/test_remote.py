"""``dsm train`` on data in a bucket and behind a web server, with checkpoints, exports and MLflow
artifacts in the bucket. Real servers on 127.0.0.1 (tests/servers.py), real Ray Train."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dsm.core.bundle import load_model
from dsm.plumbing.config import ConfigError
from dsm.plumbing.store import Location
from dsm.runtime.tracking import ARTIFACT_ROOT_ENV, tracking_uri
from dsm.train.build import resolve_data
from dsm.train.run import plan, train
from tests import servers


def _with_data(cfg, train_url: str, eval_url: str | None, ws: Path):
    data = cfg.data.model_copy(update={"dataset": None, "path": train_url, "eval_path": eval_url})
    return resolve_data(cfg.model_copy(update={"data": data}), ws, progress=False)


@pytest.mark.slow  # about a minute: two Ray Train runs of 2 workers
def test_train_from_a_bucket_into_a_bucket(ray_cluster, make_cfg, bucket, tmp_path, monkeypatch):
    local = make_cfg()
    digits = Path(local.data.path).parent
    servers.upload(digits, f"{bucket}/digits")
    monkeypatch.setenv(ARTIFACT_ROOT_ENV, f"{bucket}/mlflow")
    ws = tmp_path / "ws"
    cfg = _with_data(make_cfg("steps=20", "checkpoint.every=10", "log_every=10", "name=from-s3"),
                     f"{bucket}/digits/train", f"{bucket}/digits/test", ws)
    assert cfg.data.path == f"{bucket}/digits/train" and cfg.data.eval_path == f"{bucket}/digits/test"
    p = plan(cfg, ws, progress=False, storage=f"{bucket}/runs")
    assert p.out.url == f"{bucket}/runs/from-s3" and cfg.scaling.workers == 2
    staging = Path(tempfile.gettempdir()) / "dsm-run-from-s3"  # rank 0's (Worker.run_dir), left by an old run
    staging.mkdir(exist_ok=True)
    (staging / "model-best.pt").write_bytes(b"stale")
    export = train(p, log_to_driver=False)
    assert not staging.exists()  # removed once its files were published

    # checkpoints and the published outputs are in the bucket; the driver has a local copy
    remote = Location.of(f"{bucket}/runs/from-s3")
    assert {"model.pt", "model-best.pt", "config.yaml"} <= set(remote.listing())
    assert [f.name.startswith("checkpoint_") for f in remote.subfolders()].count(True) == 2
    assert export == p.export_path
    assert (remote / "model.pt").read_bytes() == export.read_bytes()
    b = load_model(export)
    assert b.meta["step"] == 20 and b.normalization is not None

    # MLflow: the datasets are the bucket's, the artifacts are in the bucket
    client = MlflowClient(tracking_uri(ws))
    run = client.search_runs([client.get_experiment_by_name("dsm-train").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith(f"{bucket}/mlflow/dsm-train/")
    assert run.data.tags["dsm.export"] == f"{bucket}/runs/from-s3/model.pt"
    sources = {d.dataset.source for d in client.get_run(run.info.run_id).inputs.dataset_inputs}
    assert any(f"{bucket}/digits/train" in s for s in sources), sources
    assert {"config.yaml", "model", "figures"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in Location.of(run.info.artifact_uri).listing()

    # the same command resumes from the bucket's checkpoint: no new steps, the same run
    again = plan(cfg, ws, progress=False, storage=f"{bucket}/runs")
    assert train(again, log_to_driver=False) == export
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [10, 20]
    # a changed config is refused before Ray starts, reading the bucket's checkpoint
    other = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"lr": 0.5})})
    with pytest.raises(ConfigError, match=r"was trained with another config: optim\.lr"):
        plan(other, ws, progress=False, storage=f"{bucket}/runs")


@pytest.mark.slow  # half a minute: one Ray Train run
def test_train_from_a_web_server(ray_cluster, make_cfg, tmp_path):
    local = make_cfg()
    digits = Path(local.data.path).parent
    with servers.HTTPServer(digits) as http:
        with pytest.raises(ConfigError, match=rf"^data\.path: {http.url}/nowhere does not exist"):
            _with_data(local, f"{http.url}/nowhere", None, tmp_path)
        cfg = _with_data(make_cfg("steps=10", "checkpoint.every=10", "log_every=5", "name=from-http",
                                  "scaling.workers=1", "eval.enabled=false"), f"{http.url}/train", None, tmp_path)
        assert cfg.data.eval_path == f"{http.url}/test"  # the test split beside, as for a folder
        before = http.state["gets"]
        export = train(plan(cfg, tmp_path, progress=False), log_to_driver=False)
        assert load_model(export).meta["step"] == 10
        assert http.state["gets"] > before
