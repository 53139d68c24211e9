"""Sweep specs written per test, on the digits smoke config (data prepared once per session)."""

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def write_spec(tmp_path):
    """Write a spec (dict) next to a copy-free reference to the smoke config; returns its path."""

    def write(spec: dict, name: str = "spec.yaml") -> Path:
        body = {"base": str(REPO / "configs" / "digits-smoke.yaml"), **spec}
        p = tmp_path / name
        p.write_text(yaml.safe_dump(body, sort_keys=False))
        return p

    return write
