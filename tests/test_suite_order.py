"""The module groups and order that tests/conftest.py gives pytest-xdist name modules that exist."""

from pathlib import Path

from tests.conftest import LONGEST_FIRST

REPO = Path(__file__).resolve().parents[1]


def test_longest_first_names_existing_modules():
    missing = [m for m in LONGEST_FIRST if not (REPO / m).is_file()]
    assert not missing, f"tests/conftest.py LONGEST_FIRST names modules that are gone: {missing}"
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
