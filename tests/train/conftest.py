"""Shared pieces for the training tests (the digits workspace fixture is in tests/conftest.py)."""

from pathlib import Path

import pytest

from dsm.plumbing.config import load_config
from dsm.train.build import resolve_data
from dsm.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "digits-smoke.yaml"


def smoke_cfg(workspace: Path, *overrides: str) -> TrainConfig:
    # The consistency checks add seconds per evaluation: on only where a test asks for them
    cfg = load_config(TrainConfig, SMOKE, ["eval.consistency=false", *overrides])
    return resolve_data(cfg, workspace, progress=False)


@pytest.fixture
def make_cfg(digits_workspace):
    """TrainConfig from the digits smoke config plus overrides, data resolved in the workspace."""

    def make(*overrides: str) -> TrainConfig:
        return smoke_cfg(digits_workspace, *overrides)

    return make


# The two-worker run that tests/train/test_run.py reads (and one test there re-runs): 20 steps,
# a checkpoint and evaluation (with the consistency checks) every 10, so that there are two
# evaluations to select model-best.pt from and a weight EMA to export. The evaluation is small
# (64 held-out examples, 8 ODE steps, 8 heat examples per band): the tests check that its
# metrics are logged and finite, not their precision (tests/train/test_evaluate.py does).
TWO_WORKERS = ("steps=20", "checkpoint.every=10", "log_every=5", "optim.ema_decay=0.9", "name=two-workers",
               "eval.consistency=true", "eval.samples=64", "eval.ode_steps=8", "eval.heat_examples=8")


@pytest.fixture(scope="session")
def two_worker_run(ray_cluster, digits_workspace):
    """One finished two-worker digits run on the session's Ray, trained once per session;
    returns (its Plan, the export path that train() returned)."""
    from dsm.train.run import plan, train

    p = plan(smoke_cfg(digits_workspace, *TWO_WORKERS), digits_workspace, progress=False)
    return p, train(p, log_to_driver=False)



@pytest.fixture
def no_ray(monkeypatch):
    """ray.init fails the test: for commands that must start no Ray (print-config, dry-run)."""
    import ray

    def refuse(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", refuse)
