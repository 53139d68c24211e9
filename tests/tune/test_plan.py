"""Spec validation and trial expansion: everything that must fail before a trial starts."""

import pytest

from dsm.cli import main as cli
from dsm.plumbing.config import ConfigError
from dsm.tune.plan import check_local_cpus, describe, make_plan

SMALL = {"steps": 60, "checkpoint": {"every": 20}}


def test_shipped_specs_are_valid(digits_workspace):
    from tests.tune.conftest import REPO

    for spec in sorted((REPO / "tune").glob("*.yaml")):
        plan = make_plan(spec, workspace=digits_workspace, prepare_data=False)
        assert plan.trials is None or len(plan.trials) >= 2, spec


def test_grid_and_random_expansion_is_seeded_and_complete(write_spec, digits_workspace):
    spec = write_spec({"overrides": SMALL, "samples": 3, "seed": 7,
                       "scheduler": {"grace_period": 20},
                       "space": {"loss.tsm_weight": {"grid": [0.0, 1.0]},
                                 "optim.lr": {"loguniform": [1e-4, 1e-2]},
                                 "model.form": {"choice": ["inner", "inner+c"]}}})
    a = make_plan(spec, workspace=digits_workspace)
    b = make_plan(spec, workspace=digits_workspace)
    assert len(a.trials) == 6  # the grid (2) repeated for each of 3 samples
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert [t.params["loss.tsm_weight"] for t in a.trials] == [0.0, 1.0] * 3
    assert all(1e-4 <= t.params["optim.lr"] <= 1e-2 for t in a.trials)
    assert len({t.params["optim.lr"] for t in a.trials}) == 6
    assert a.trials[3].cfg.loss.tsm_weight == 1.0 and a.trials[3].cfg.optim.lr == a.trials[3].params["optim.lr"]
    assert a.trials[0].cfg.steps == 60 and a.trials[0].cfg.tracking.experiment == "dsm-tune"
    assert a.name == b.name and a.name.startswith("spec-")
    other = make_plan(spec, ["seed=8"], workspace=digits_workspace)
    assert other.name != a.name and [t.params for t in other.trials] != [t.params for t in a.trials]

    grid = write_spec({"overrides": SMALL, "samples": 2, "search": "grid", "scheduler": {"kind": "fifo"},
                       "space": {"model.form": {"choice": ["inner", "inner+c"]}}}, "grid.yaml")
    g = make_plan(grid, workspace=digits_workspace)
    assert [(t.params["model.form"], t.params["seed"]) for t in g.trials] == [
        ("inner", 0), ("inner+c", 0), ("inner", 1), ("inner+c", 1)]  # repeats differ by their seed


@pytest.mark.parametrize("spec, match", [
    ({"space": {"optim.lrr": {"grid": [1e-3]}}}, r"space: 'optim.lrr': no field 'lrr' in optim"),
    ({"space": {"optimizer.lr": {"grid": [1e-3]}}}, r"no field 'optimizer' in the top level"),
    ({"space": {}}, r"search space is empty"),
    ({"space": {"optim.lr": {"grid": []}}}, r"empty"),
    ({"space": {"optim.lr": {"loguniform": [0, 1]}}}, r"must be > 0"),
    ({"space": {"optim.lr": {"grid": [1e-3], "choice": [1]}}}, r"exactly one of"),
    ({"space": {"optim.lr": {"grid": [1e-3, -1.0]}}}, r"optim.lr.*greater than 0"),
    ({"space": {"model.form": {"grid": ["inner", "bogus"]}}}, r"model.form"),
    ({"space": {"optim.lr": {"grid": [1e-3]}}, "metric": "eval/nll"}, r"never reports 'eval/nll'"),
    ({"space": {"model.kind": {"grid": ["energy", "score"]}}}, r"never reports 'eval/nll_bpd'.*only energy"),
    ({"space": {"optim.lr": {"grid": [1e-3]}}, "overrides": {"eval": {"enabled": False}}},
     r"eval.enabled is false"),
    ({"space": {"optim.lr": {"grid": [1e-3]}}, "scheduler": {"grace_period": 30}}, r"multiple of checkpoint.every"),
    ({"space": {"optim.lr": {"uniform": [1e-3, 2e-3]}}, "search": "grid"}, r"must be grid or choice"),
    ({"space": {"optim.lr": {"grid": [1e-3]}}, "overrides": {"optim.lr": 1e-3}}, r"both swept and fixed"),
    ({"space": {"optim.lr": {"grid": [1e-3]}}, "bogus": 1}, r"bogus"),
])
def test_bad_specs_fail_before_anything_starts(write_spec, digits_workspace, spec, match):
    spec.setdefault("overrides", SMALL)
    spec.setdefault("scheduler", {"grace_period": 20})
    with pytest.raises(ConfigError, match=match):
        make_plan(write_spec(spec), workspace=digits_workspace)


def test_trial_too_big_for_the_machine(write_spec, digits_workspace):
    spec = write_spec({"overrides": SMALL, "scheduler": {"grace_period": 20},
                       "resources": {"workers": 2, "cpus_per_worker": 1.0, "trial_cpu": 0.5},
                       "space": {"optim.lr": {"grid": [1e-3]}}})
    plan = make_plan(spec, workspace=digits_workspace)
    with pytest.raises(ConfigError, match=r"resources: one trial needs 2.5 CPUs"):
        check_local_cpus(plan, cpus=2.0)
    check_local_cpus(plan, cpus=4.0)


def test_dry_run_prints_trials_and_claims_nothing(write_spec, tmp_path, capsys, monkeypatch):
    import ray

    import dsm.runtime.cluster

    def no_ray(*a, **k):
        raise AssertionError("Ray was joined")

    ws = tmp_path / "ws"
    spec = write_spec({"overrides": SMALL, "scheduler": {"grace_period": 20},
                       "resources": {"workers": 2, "cpus_per_worker": 0.9},
                       "space": {"optim.lr": {"grid": [1e-3, 2e-3]}, "loss.tsm_weight": {"choice": [0, 1]}}})
    # An unreachable cluster address, and no way to join one: a dry run that tried would fail.
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    monkeypatch.setattr(dsm.runtime.cluster, "connect", no_ray)
    ray_was_up = ray.is_initialized()
    assert cli(["tune", str(spec), "--dry-run", "--workspace", str(ws)]) == 0
    out = capsys.readouterr().out
    assert "2 trial(s)" in out and "-t000" in out and "-t001" in out and "each: 2 worker(s) x 0.9 CPU;" in out
    assert "nothing started" in out and "prepared on the first real run" in out
    assert not (ws / "mlflow.db").exists() and not (ws / "data").exists() and not (ws / "sweeps").exists()
    assert ray.is_initialized() == ray_was_up


def test_cli_bad_spec_exits_2_naming_the_field(write_spec, tmp_path, capsys):
    spec = write_spec({"space": {"optim.lrr": {"grid": [1e-3]}}})
    assert cli(["tune", str(spec), "--workspace", str(tmp_path / "ws")]) == 2
    assert "optim.lrr" in capsys.readouterr().err
    assert not (tmp_path / "ws" / "mlflow.db").exists()


def test_optuna_search_is_optional(write_spec, digits_workspace):
    import importlib.util

    spec = write_spec({"overrides": SMALL, "scheduler": {"grace_period": 20}, "search": "optuna", "samples": 5,
                       "space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}}})
    if importlib.util.find_spec("optuna") is None:  # not a dependency: a clear error says how to get it
        with pytest.raises(ConfigError, match="optuna is not installed"):
            make_plan(spec, workspace=digits_workspace)
    else:
        assert "5 trial(s) proposed by Optuna" in describe(make_plan(spec, workspace=digits_workspace))
