"""A sweep's trials as one markdown table: the swept parameters, then each trial's held-out NLL
and self-consistency metrics at every evaluation step, read from the workspace's MLflow store.

    .venv/bin/python benchmarks/sweep_table.py patches-recipe-89508c22 --workspace /work/ws

Columns: NLL in bits/dim (8-bit convention) and in nats/dim of log p, the log Z spread over
t = 100..1000 (nats), the energy - PF-ODE gap (mean and mean |gap|, nats/dim) and the
near-Gaussian deviation of t Laplacian U / d at t_max. docs/recipes.md holds the tables.
"""

from __future__ import annotations

import argparse
import math

from mlflow.tracking import MlflowClient

from dsm.runtime.tracking import tracking_uri, workspace_dir

COLUMNS = {"eval/nll_bpd": "NLL (bits/dim)", "consistency/log_z_spread_nats": "log Z spread (nats)",
           "consistency/ode_gap_nats_per_dim": "energy - ODE (nats/dim)",
           "consistency/ode_gap_abs_nats_per_dim": "mean abs gap",
           "consistency/near_gaussian_deviation": "near-Gaussian dev."}


def trials(client: MlflowClient, sweep: str) -> list:
    runs = []
    for exp in client.search_experiments():
        runs += [r for r in client.search_runs([exp.experiment_id], max_results=500)
                 if r.data.tags.get("mlflow.runName", "").startswith(sweep + "-t")]
    return sorted(runs, key=lambda r: r.data.tags["mlflow.runName"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="the sweep's name (dsm tune prints it)")
    p.add_argument("--workspace", default=None)
    p.add_argument("--params", default="noise.t_min,optim.ema_decay", help="comma-separated swept fields")
    args = p.parse_args()
    client = MlflowClient(tracking_uri(workspace_dir(args.workspace)))
    params = [k for k in args.params.split(",") if k]
    print("| trial | " + " | ".join(params) + " | step | log p (nats/dim) | " + " | ".join(COLUMNS.values()) + " |")
    print("|---" * (len(params) + 3 + len(COLUMNS)) + "|")
    for r in trials(client, args.sweep):
        hist = {k: {m.step: m.value for m in client.get_metric_history(r.info.run_id, k)} for k in COLUMNS}
        for step in sorted(hist["eval/nll_bpd"]):
            nll = hist["eval/nll_bpd"][step]
            logp = (8 - nll) * math.log(2)  # 8-bit convention: bits/dim = 8 - log p / (d ln 2)
            cells = [f"{hist[k][step]:.3f}" if step in hist[k] else "" for k in COLUMNS]
            print(f"| {r.data.tags['mlflow.runName'].rsplit('-', 1)[1]} | "
                  + " | ".join(r.data.params.get(k, "") for k in params) + f" | {step} | {logp:.3f} | "
                  + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
