"""Shared pieces for the training tests (the digits workspace fixture is in tests/conftest.py)."""

from pathlib import Path

import pytest

from dsm.plumbing.config import load_config
from dsm.train.build import resolve_data
from dsm.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "digits-smoke.yaml"


@pytest.fixture
def make_cfg(digits_workspace):
    """TrainConfig from the digits smoke config plus overrides, data resolved in the workspace."""

    def make(*overrides: str) -> TrainConfig:
        # The consistency checks add seconds per evaluation: on only where a test asks for them
        cfg = load_config(TrainConfig, SMOKE, ["eval.consistency=false", *overrides])
        return resolve_data(cfg, digits_workspace, progress=False)

    return make
