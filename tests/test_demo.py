import json

import pytest

from dsm.cli import main
from dsm.demo import DemoConfig
from dsm.plumbing.config import load_config


def test_demo_runs_end_to_end_and_logs_to_mlflow(tmp_path, monkeypatch, capsys, one_torch_thread):
    """(On one torch thread: its width-32 MLP on a shared 2-core machine ran 3-5x slower on two.)"""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = tmp_path / "ws"
    rc = main(["demo", "--quiet", "steps=30", "n_test=200", "ode_points=2", "ode_steps=8", "width=32",
               f"workspace={ws}"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "log Z at t=1000" in out and "PF-ODE check" in out and "MLflow run" in out
    metrics = json.loads((ws / "demo" / "metrics.json").read_text())
    assert metrics["log_z_stderr"] > 0 and metrics["ode_nfe"] == 17
    assert (ws / "demo" / "demo.png").stat().st_size > 10_000

    from mlflow.tracking import MlflowClient

    # a client, not mlflow.set_tracking_uri: that would write $MLFLOW_TRACKING_URI for every later test
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.metrics["log_z"] == pytest.approx(metrics["log_z"])
    assert run.data.params["steps"] == "30"
    arts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert arts == ["demo.png"]
    assert str(ws) in run.info.artifact_uri  # artifacts under the workspace, not ./mlruns


def test_bad_demo_config_fails_fast_naming_the_field(capsys):
    assert main(["demo", "stpes=3"]) == 2  # in-process: the exit code is main's return value
    assert "stpes: Extra inputs are not permitted" in capsys.readouterr().err
    with pytest.raises(Exception, match="t_min .* must be < t_max"):
        load_config(DemoConfig, None, ["t_min=10", "t_max=1"])
    with pytest.raises(Exception, match="t_sampler 'cosine' unknown"):
        load_config(DemoConfig, None, ["t_sampler=cosine"])


def test_cli_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:  # argparse's --help exits; `python -m dsm.cli` passes the code on
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "demo" in out and "ui" in out
