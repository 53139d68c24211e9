"""Shared pieces for the training tests: a session workspace with the digits prepared once."""

from pathlib import Path

import pytest

from dsm.config import load_config
from dsm.train.build import resolve_data
from dsm.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "digits-smoke.yaml"


@pytest.fixture(scope="session")
def digits_workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("train-ws")
    resolve_data(load_config(TrainConfig, SMOKE), ws, progress=False)  # prepares digits once
    return ws


@pytest.fixture
def make_cfg(digits_workspace):
    """TrainConfig from the digits smoke config plus overrides, data resolved in the workspace."""

    def make(*overrides: str) -> TrainConfig:
        cfg = load_config(TrainConfig, SMOKE, list(overrides))
        return resolve_data(cfg, digits_workspace, progress=False)

    return make
