"""Shared helpers for the studies under analysis/: run dsm subcommands, read their outputs.

Every study calls the venv's ``dsm`` as a subprocess (the same commands a user types), keeps
the full log under its workspace, and uses the command's last printed line (the model path,
the parquet folder, the report folder, the samples folder). Nothing here is dsm library code.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ANALYSIS = Path(__file__).resolve().parent
REPO = ANALYSIS.parent
DSM = str(REPO / ".venv" / "bin" / "dsm")
PYTHON = str(REPO / ".venv" / "bin" / "python")
# one workspace for all studies: the built-in data is prepared once, and a study that needs
# another study's model (05 uses 04's) finds the same run name and only re-exports it
WORKSPACE = Path(os.environ.get("DSM_ANALYSIS_WORKSPACE", ANALYSIS / "runs"))


def dsm(*args: str, log: str | Path | None = None, workspace: Path | None = WORKSPACE) -> str:
    """Run ``dsm ARGS [--workspace WS]``; stream output to ``log`` (and stderr); return the last line."""
    cmd = [DSM, *map(str, args)]
    if workspace is not None and args[0] not in ("sample",):
        cmd += ["--workspace", str(workspace)]
    log_path = Path(log) if log else WORKSPACE / "logs" / f"{args[0]}-{int(time.time())}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {shlex.join(cmd)}   (log: {log_path})", file=sys.stderr, flush=True)
    t0 = time.time()
    lines: list[str] = []
    with open(log_path, "a") as fh, subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, text=True) as p:
        fh.write(f"$ {shlex.join(cmd)}\n")
        for line in p.stdout:
            fh.write(line)
            fh.flush()
            if line.strip():
                lines.append(line.rstrip("\n"))
    if p.returncode != 0:
        tail = "\n".join(lines[-25:])
        raise RuntimeError(f"{shlex.join(cmd)} exited {p.returncode}\n{tail}")
    print(f"  done in {time.time() - t0:.0f} s -> {lines[-1]}", file=sys.stderr, flush=True)
    return lines[-1].strip()


def finished_model(config: str | Path, *overrides: str) -> Path | None:
    """The exported model of this config's run if that run finished, else None. Starts nothing
    (the run name is the config's stem and fingerprint, exactly as ``dsm train`` derives it)."""
    from dsm.plumbing.config import load_config
    from dsm.train.config import TrainConfig
    from dsm.train.run import plan

    cfg = load_config(TrainConfig, str(config), list(overrides))
    p = plan(cfg, WORKSPACE, Path(config).stem, progress=False)
    status = p.run_dir / "status.txt"
    done = status.is_file() and status.read_text().partition("\n")[0] == "finished"
    return p.export_path if done and p.export_path.is_file() else None


def train(config: str | Path, *overrides: str, log: str | Path | None = None) -> Path:
    """``dsm train CONFIG overrides``; returns model.pt. A finished run is reused without
    starting Ray (``dsm train`` would only re-export it, about a minute of Ray start-up here);
    DSM_ANALYSIS_RETRAIN=1 calls ``dsm train`` anyway (it resumes an unfinished run)."""
    if not os.environ.get("DSM_ANALYSIS_RETRAIN"):
        done = finished_model(config, *overrides)
        if done is not None:
            print(f"reusing the finished run {done.parent.name}: {done}", file=sys.stderr, flush=True)
            return done
    return Path(dsm("train", str(config), *overrides, log=log))


def score(model: Path, data: Path, out: Path, *extra: str, log: str | Path | None = None) -> Path:
    """``dsm score``: skips finished parquet parts; returns the parts folder."""
    return Path(dsm("score", str(model), "--data", str(data), "--out", str(out), *extra, log=log))


def report(scores_dir: Path, *extra: str, log: str | Path | None = None) -> Path:
    return Path(dsm("report", str(scores_dir), *extra, log=log))


def sample(model: Path, n: int, seed: int, *extra: str, log: str | Path | None = None) -> Path:
    return Path(dsm("sample", str(model), "--n", str(n), "--seed", str(seed), *extra, log=log, workspace=None))


def test_split(model: Path) -> Path:
    """The held-out split of the data set a model was trained on (from its run config)."""
    import yaml

    cfg = yaml.safe_load((model.parent / "config.yaml").read_text())
    data = cfg["data"]
    if data.get("eval_path"):
        return Path(data["eval_path"])
    path = data.get("path")
    if path:
        return Path(path).parent / "test"
    raise RuntimeError(f"cannot find the held-out split in {model.parent / 'config.yaml'}")


def mlflow_metrics(model: Path, prefix: str = "") -> dict[str, list[tuple[int, float]]]:
    """Every metric history of the training run that exported ``model``: from $MLFLOW_TRACKING_URI
    when set (a tracking server), else the workspace's sqlite store."""
    import mlflow

    bundle_dir = model.parent
    run_name = bundle_dir.name
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{WORKSPACE / 'mlflow.db'}")
    client = mlflow.tracking.MlflowClient()
    runs = client.search_runs(experiment_ids=[e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.`dsm.run_name` = '{run_name}'")
    if not runs:
        raise RuntimeError(f"no MLflow run tagged dsm.run_name={run_name}")
    run = runs[0]
    out = {}
    for key in run.data.metrics:
        if key.startswith(prefix):
            hist = client.get_metric_history(run.info.run_id, key)
            out[key] = sorted((m.step, m.value) for m in hist)
    return out


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
