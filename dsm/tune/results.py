"""What a finished sweep leaves behind (no Ray): the results table, one figure of the metric
against each swept field, and the best trial's full training config."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsm.tune.spec import SweepSpec, nice


@dataclass
class TrialResult:
    """One trial's outcome. ``metric`` is its last reported value (at ``step``); status is
    ``completed``, ``stopped_early`` (by the scheduler) or ``error``."""

    name: str
    params: dict[str, Any]
    metric: float
    step: int
    steps: int
    status: str
    config: dict | None = None
    error: str = ""


def status_of(step: int, steps: int, errored: bool) -> str:
    if errored:
        return "error"
    return "completed" if step >= steps else "stopped_early"


def best(results: list[TrialResult], mode: str) -> TrialResult | None:
    """The best completed trial with a finite metric (else the best of any that reported)."""
    ok = [r for r in results if math.isfinite(r.metric)]
    pool = [r for r in ok if r.status == "completed"] or ok
    if not pool:
        return None
    return (min if mode == "min" else max)(pool, key=lambda r: r.metric)


def write_table(results: list[TrialResult], metric: str, path: Path) -> Path:
    keys = sorted({k for r in results for k in r.params})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", *keys, metric, "step", "steps", "status", "error"])
        for r in results:
            w.writerow([r.name, *[r.params.get(k, "") for k in keys], r.metric, r.step, r.steps, r.status,
                        r.error[:200]])
    return path


def write_figure(results: list[TrialResult], spec: SweepSpec, path: Path) -> Path:
    """One panel per swept field: the metric of every trial that reported, marked by status."""
    from dsm.plumbing.plots import pyplot, save_figure

    plt = pyplot()

    keys = list(spec.space)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False)
    marks = {"completed": ("o", "C0"), "stopped_early": ("x", "C3"), "error": ("s", "0.5")}
    for ax, key in zip(axes[0], keys):
        param = spec.space[key]
        values = [r.params.get(key) for r in results]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None)
        cats = [] if numeric else sorted({nice(v) for v in values}, key=str)
        for status, (m, c) in marks.items():
            pts = [(r.params.get(key), r.metric) for r in results
                   if r.status == status and math.isfinite(r.metric) and r.params.get(key) is not None]
            if pts:
                xs = [p[0] if numeric else cats.index(nice(p[0])) for p in pts]
                ax.scatter(xs, [p[1] for p in pts], marker=m, color=c, label=status.replace("_", " "))
        if numeric and param.is_log_scale():
            ax.set_xscale("log")
        if cats:
            ax.set_xticks(range(len(cats)), cats)
        ax.set_xlabel(key)
        ax.set_ylabel(spec.metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{spec.metric} ({spec.mode}) at each trial's last report", fontsize=10)
    return save_figure(fig, path)


def write_best_config(result: TrialResult, path: Path) -> Path:
    """The best trial's full training config, ready for ``dsm train`` (its run name dropped)."""
    import yaml

    cfg = dict(result.config or {})
    cfg.pop("name", None)
    header = f"# best trial {result.name}: {nice(result.metric)} at step {result.step}\n"
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    return path
