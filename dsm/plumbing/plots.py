"""The one place that picks matplotlib's backend and the figures' resolution.

Every figure dsm writes (a run's evaluation grid, a sweep's metric panels, a score job's
histograms, the report, the demo) is drawn on ``pyplot()`` and written by ``save_figure``. The
Agg backend draws without a display: commands run on cluster nodes and in CI.
"""

from __future__ import annotations

from pathlib import Path

DPI = 110  # PNGs of a few hundred KiB at most, readable in the MLflow UI at full width


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: a command that draws
    nothing does not pay for it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Lay ``fig`` out, write it to ``path`` as PNG (its folder made if missing), close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path
