"""dsm: normalized image densities by dual score matching (Guth, Kadkhodaie and Simoncelli,
NeurIPS 2025), trained and scored at cluster scale on Ray and tracked in MLflow.

The notebook API is :mod:`dsm.api`; the command line is ``dsm`` (:mod:`dsm.cli`)."""

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "dsm"  # the name pip knows it by (pyproject.toml's project.name)

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
