"""``dsm compare``: several training runs side by side, from the workspace's MLflow store.

Each argument is a run (its name, the ``dsm.run_name`` tag, or its id) or a sweep (the name of
a ``dsm tune`` run, which stands for its trials). For each run: its last held-out NLL in
bits/dim (``eval/nll_bpd`` with its standard error), log Z with its standard error
(``eval/log_z``), the median time per training step (``train/step_s``), steps done, and the
denoiser's output PSNR at each input PSNR (``eval/psnr_out_in{p}dB``). The table goes to
stdout and ``compare.csv``; the figure (held-out NLL against step, output against input PSNR)
to ``compare.png``; both in ``<workspace>/compare/<hash of the runs>/`` and on a run of the
``dsm-compare`` experiment tagged with the runs it compares.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from dsm.runtime.tracking import RUN_NAME_TAG

PSNR = re.compile(r"^eval/psnr_out_in(-?[\d.]+)dB$")
NAN = float("nan")


@dataclass
class RunSummary:
    """One run's numbers for the comparison (nan where the run has none)."""

    name: str
    run_id: str
    steps: int
    nll_bpd: float = NAN
    nll_bpd_stderr: float = NAN
    log_z: float = NAN
    log_z_stderr: float = NAN
    step_s: float = NAN
    psnr: dict[float, float] = field(default_factory=dict)  # input PSNR (dB) -> output PSNR (dB)
    nll_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, eval/nll_bpd)


def find_runs(client, refs: list[str]) -> list:
    """The MLflow runs that ``refs`` name (a sweep stands for its trials, in name order).
    ValueError names a reference that matches nothing."""
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = []
    for ref in refs:
        found = _by_id(client, ref) or client.search_runs(exps, f"tags.`{RUN_NAME_TAG}` = '{ref}'",
                                                          order_by=["attributes.start_time DESC"], max_results=1)
        if not found:
            raise ValueError(f"no run or sweep called {ref!r} in this workspace's MLflow store")
        run = found[0]
        if run.data.tags.get("dsm.kind") == "sweep":
            trials = client.search_runs(exps, f"tags.`mlflow.parentRunId` = '{run.info.run_id}'", max_results=1000)
            runs += sorted(trials, key=lambda r: r.data.tags.get(RUN_NAME_TAG, r.info.run_name))
        else:
            runs.append(run)
    return runs


def _by_id(client, ref: str) -> list:
    if not re.fullmatch(r"[0-9a-f]{32}", ref):
        return []
    try:
        return [client.get_run(ref)]
    except Exception:  # noqa: BLE001 - not an id in this store: try it as a name
        return []


def summarize_run(client, run) -> RunSummary:
    m, rid = run.data.metrics, run.info.run_id
    times = sorted(x.value for x in client.get_metric_history(rid, "train/step_s"))
    curve = sorted((int(x.step), float(x.value)) for x in client.get_metric_history(rid, "eval/nll_bpd"))
    psnr = {float(g.group(1)): float(v) for k, v in m.items() if (g := PSNR.match(k))}
    return RunSummary(name=run.data.tags.get(RUN_NAME_TAG, run.info.run_name), run_id=rid,
                      steps=int(m.get("progress/step", 0)), nll_bpd=m.get("eval/nll_bpd", NAN),
                      nll_bpd_stderr=m.get("eval/nll_bpd_stderr", NAN), log_z=m.get("eval/log_z", NAN),
                      log_z_stderr=m.get("eval/log_z_stderr", NAN),
                      step_s=times[len(times) // 2] if times else NAN, psnr=dict(sorted(psnr.items())),
                      nll_curve=curve)


def format_table(rows: list[RunSummary]) -> str:
    inputs = sorted({p for r in rows for p in r.psnr})
    head = ["run", "steps", "NLL bits/dim", "log Z nats", "s/step", *(f"PSNR@{p:g}dB" for p in inputs)]
    body = [[r.name, str(r.steps), f"{r.nll_bpd:.4f} +- {r.nll_bpd_stderr:.4f}",
             f"{r.log_z:.3f} +- {r.log_z_stderr:.3f}", f"{r.step_s:.3f}",
             *(f"{r.psnr[p]:.2f}" if p in r.psnr else "-" for p in inputs)] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in [head, *body])


def write_csv(rows: list[RunSummary], path: Path) -> Path:
    inputs = sorted({p for r in rows for p in r.psnr})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "run_id", "steps", "nll_bpd", "nll_bpd_stderr", "log_z_nats", "log_z_stderr",
                    "step_s", *(f"psnr_out_in{p:g}dB" for p in inputs)])
        for r in rows:
            w.writerow([r.name, r.run_id, r.steps, r.nll_bpd, r.nll_bpd_stderr, r.log_z, r.log_z_stderr, r.step_s,
                        *(r.psnr.get(p, "") for p in inputs)])
    return path


def figure(rows: list[RunSummary], path: Path) -> Path:
    """Held-out NLL (bits/dim) against step, and output against input PSNR (dB), one line a run."""
    from dsm.plumbing.plots import pyplot, save_figure

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        if r.nll_curve:
            a.plot(*zip(*r.nll_curve), marker="o", ms=3, label=r.name)
        if r.psnr:
            b.plot(list(r.psnr), list(r.psnr.values()), marker="o", ms=3, label=r.name)
    a.set(xlabel="step", ylabel="held-out NLL (bits/dim)", title="held-out NLL")
    lo_hi = [p for r in rows for p in r.psnr]
    if lo_hi:
        b.plot([min(lo_hi), max(lo_hi)], [min(lo_hi), max(lo_hi)], "k:", lw=1, label="identity")
    b.set(xlabel="input PSNR (dB)", ylabel="output PSNR (dB)", title="denoising")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    return save_figure(fig, path)


def compare(refs: list[str], workspace: str | Path | None = None) -> tuple[list[RunSummary], Path]:
    """Summaries of the runs ``refs`` name, and the folder holding compare.csv and compare.png."""
    from mlflow.tracking import MlflowClient

    from dsm.runtime.tracking import tracking_uri, workspace_dir

    client = MlflowClient(tracking_uri(workspace))
    rows = [summarize_run(client, r) for r in find_runs(client, refs)]
    key = hashlib.sha256("\n".join(r.run_id for r in rows).encode()).hexdigest()[:10]
    out = workspace_dir(workspace) / "compare" / key
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "compare.csv")
    figure(rows, out / "compare.png")
    return rows, out


def log_comparison(rows: list[RunSummary], out: Path, workspace: str | Path | None) -> str | None:
    """The comparison as a run of ``dsm-compare`` (table and figure as artifacts, the runs as a
    tag); never fails the command."""
    from dsm.runtime.tracking import best_effort, source_tags, tracking_uri, use_experiment

    def log(client) -> str:
        tags = {**source_tags("compare"), "dsm.compared_runs": ",".join(r.run_id for r in rows)[:5000]}
        rid = client.create_run(use_experiment("dsm-compare", workspace, client),
                                run_name=f"compare-{out.name}", tags=tags).info.run_id
        client.log_artifacts(rid, str(out))
        client.set_terminated(rid)
        return rid

    return best_effort("compare", tracking_uri(workspace), log)
