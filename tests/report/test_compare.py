"""`dsm compare` on a real MLflow store holding two training runs and a sweep of two trials,
their metrics logged the way dsm train logs them (names, steps)."""

import csv
import time

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from dsm.cli import main
from dsm.runtime.tracking import open_run, tracking_uri


def _log(client, run_id: str, nll: list[float], log_z: float, step_s: list[float], psnr: dict[float, float]):
    now = int(time.time() * 1000)
    rows = [Metric("eval/nll_bpd", v, now, 100 * (i + 1)) for i, v in enumerate(nll)]
    rows += [Metric("train/step_s", v, now, 25 * (i + 1)) for i, v in enumerate(step_s)]
    last = 100 * len(nll)
    rows += [Metric("eval/nll_bpd_stderr", 0.01, now, last), Metric("eval/log_z", log_z, now, last),
             Metric("eval/log_z_stderr", 0.05, now, last), Metric("progress/step", last, now, last)]
    rows += [Metric(f"eval/psnr_out_in{p:g}dB", v, now, last) for p, v in psnr.items()]
    client.log_batch(run_id, metrics=rows)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One store for the module (its SQLite schema is made once): the tests only read the runs;
    `dsm compare` adds its own run under dsm-compare, which only a successful compare makes."""
    tmp_path = tmp_path_factory.mktemp("compare-ws")
    uri = tracking_uri(tmp_path)
    client = MlflowClient(uri)
    a = open_run("dsm-train", "run-a", uri, tmp_path, {}, {})
    b = open_run("dsm-train", "run-b", uri, tmp_path, {}, {})
    _log(client, a, [2.0, 1.5, 1.25], 97.5, [0.2, 0.1, 0.3], {0: 8.0, 10: 15.0})
    _log(client, b, [2.5, 2.0], 96.0, [0.5, 0.4, 0.6], {0: 7.0, 10: 14.0, 20: 22.0})
    parent = open_run("dsm-tune", "sweep-x", uri, tmp_path, {}, {"dsm.kind": "sweep"}, command="tune")
    for i, nll in enumerate((1.9, 1.7)):
        t = open_run("dsm-tune", f"sweep-x-t00{i}", uri, tmp_path, {}, {"mlflow.parentRunId": parent},
                     command="tune")
        _log(client, t, [nll], 95.0, [0.3], {10: 12.0})
    return tmp_path


def test_runs_and_a_sweeps_trials_side_by_side_with_a_figure(workspace, capsys):
    assert main(["compare", "run-a", "run-b", "sweep-x", "--workspace", str(workspace)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    folder = workspace / "compare" / out[-1].split("/")[-1]
    assert out[-1] == str(folder)
    assert out[0].split() == ["run", "steps", "NLL", "bits/dim", "log", "Z", "nats", "s/step",
                              "PSNR@0dB", "PSNR@10dB", "PSNR@20dB"]
    assert [line.split()[0] for line in out[1:5]] == ["run-a", "run-b", "sweep-x-t000", "sweep-x-t001"]
    rows = {r["run"]: r for r in csv.DictReader(open(folder / "compare.csv"))}
    a, b = rows["run-a"], rows["run-b"]
    assert float(a["nll_bpd"]) == 1.25 and float(a["log_z_nats"]) == 97.5 and a["steps"] == "300"
    assert float(a["step_s"]) == 0.2 and float(b["step_s"]) == 0.5  # medians of the logged step times
    assert a["psnr_out_in20dB"] == "" and float(b["psnr_out_in20dB"]) == 22.0
    assert float(rows["sweep-x-t001"]["nll_bpd"]) == 1.7
    assert (folder / "compare.png").stat().st_size > 10_000
    client = MlflowClient(tracking_uri(workspace))
    (run,) = client.search_runs([client.get_experiment_by_name("dsm-compare").experiment_id])
    assert len(run.data.tags["dsm.compared_runs"].split(",")) == 4
    assert {f.path for f in client.list_artifacts(run.info.run_id)} == {"compare.csv", "compare.png"}


def test_an_unknown_name_is_one_line(workspace, capsys):
    assert main(["compare", "run-a", "nope", "--workspace", str(workspace)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dsm compare: no run or sweep called 'nope' in this workspace's MLflow store"], err
