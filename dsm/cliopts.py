"""Options that several ``dsm`` commands share, declared once (each command's parser adds them)."""

from __future__ import annotations

import argparse

WORKSPACE_HELP = "workspace folder (default $DSM_WORKSPACE, else ./dsm-runs)"
ADDRESS_HELP = "Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)"


def add_workspace(parser: argparse.ArgumentParser, help: str = WORKSPACE_HELP) -> None:
    """``--workspace``: where runs, data, scores and the MLflow store go (dsm.tracking.workspace_dir)."""
    parser.add_argument("--workspace", default=None, help=help)


def add_address(parser: argparse.ArgumentParser, help: str = ADDRESS_HELP) -> None:
    """``--address``: the Ray cluster to join or submit to."""
    parser.add_argument("--address", default=None, help=help)
