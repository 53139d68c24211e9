"""Fixtures for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.data._util import write_shards


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """80 colour 8x8 images in 8 shards of 10."""
    folder = tmp_path / "train"
    return folder, write_shards(folder, 80, shard_size=10)
