"""``dsm normalize`` and ``dsm score``: registered into the top-level parser by :func:`register`.

Both check their inputs (model file, normalization, data, shapes) before Ray or MLflow is
touched; bad input exits with status 2 and a message naming the file. ``dsm score`` prints
the parquet folder (a path or a URL) as its last line.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dsm.cliopts import add_address, add_gpu_options, add_workspace

if TYPE_CHECKING:
    from dsm.plumbing.store import Location


@dataclass
class Lineage:
    """What a normalize or score run came from: the training run, the model file's content (its
    sha256, which finds the run's MLflow model), the registered version scored, the data."""

    model_run_id: str | None = None
    model_sha256: str | None = None
    model_uri: str | None = None
    data: object = None  # a dsm.data.inputs.Input


def _tracking(command: str, workspace: str | None, run_name: str, params: dict, metrics: dict,
              artifacts: list[Path], lineage: Lineage) -> str | None:
    """Log a finished run about the model (dsm.runtime.tracking.child_run), with its model and
    data as the run's inputs; never fails the command. Returns the run id or None."""
    from dsm.runtime.tracking import best_effort, child_run, log_dataset, tracking_uri

    def log(client) -> str:
        from mlflow.entities import LoggedModelInput

        from dsm.runtime.mlmodel import logged_model_of

        tags = {"dsm.model_uri": lineage.model_uri} if lineage.model_uri else {}
        rid = child_run(client, lineage.model_run_id, "dsm-score", workspace, run_name, command, tags)
        for k, v in params.items():
            client.log_param(rid, k, str(v)[:6000])
        for k, v in metrics.items():
            client.log_metric(rid, k, float(v))
        for a in artifacts:
            client.log_artifact(rid, str(a))
        if lineage.data is not None:
            log_dataset(client, rid, lineage.data, "scoring" if command == "score" else "evaluation")
        model_id = (logged_model_of(client, lineage.model_run_id, lineage.model_sha256)
                    if lineage.model_run_id and lineage.model_sha256 else None)
        if model_id:
            client.log_inputs(rid, models=[LoggedModelInput(model_id)])  # the model it scored, linked
        client.set_terminated(rid)
        return rid

    return best_effort(command, tracking_uri(workspace), log)


def _model_file(model: str, workspace: str | None) -> tuple[str, Lineage]:
    """The local bundle for ``dsm score MODEL``: the path itself, or a registered version
    (``models:/NAME/VERSION``) downloaded once under the workspace's models/ folder."""
    from dsm.runtime.mlmodel import fetch_bundle, is_model_uri

    if not is_model_uri(model):
        return model, Lineage()
    from mlflow.tracking import MlflowClient

    from dsm.runtime.tracking import tracking_uri, workspace_dir

    bundle, info = fetch_bundle(MlflowClient(tracking_uri(workspace)), model, workspace_dir(workspace) / "models")
    print(f"dsm score: {model} is {bundle}", flush=True)
    return str(bundle), Lineage(model_run_id=info["run_id"], model_uri=model)


def _normalize(args: argparse.Namespace) -> int:
    from dsm.core.bundle import load_model
    from dsm.scoring.normalization import normalize_bundle

    bundle = load_model(args.model)
    rec = normalize_bundle(bundle, args.model, args.data, samples=args.samples, t=args.t, batch_size=args.batch_size,
                          precision=args.precision, gpu=args.gpu, address=args.address,
                          resource_timeout_s=args.resource_timeout)
    ag = rec["agreement"]
    print(f"log Z = {rec['value']:.4f} +- {rec['stderr']:.4f} nats at t = {rec['t']:g} ({rec['n']} examples, "
          f"{rec['method']} estimator)")
    print("agreement across t: " + ", ".join(f"t={t:g}: {v:.3f} +- {s:.3f}" for t, v, s in
                                             zip(ag["t"], ag["log_z"], ag["stderr"]))
          + f"; chi2 {ag['chi2']:.2f} -> "
            f"{'consistent' if ag['consistent'] else 'INCONSISTENT: train longer or raise t'}")
    from dsm.core.consistency import PREFIX, out_of_bounds

    for line in out_of_bounds({PREFIX + "log_z_spread_nats": ag["max_abs_diff"]}):
        print(line)
    from dsm.data.inputs import open_input

    _tracking("normalize", args.workspace, f"normalize-{Path(args.model).parent.name}",
              {"model": args.model, "data": rec["data"], "samples": rec["n"], "t": rec["t"],
               "precision": rec["precision"], "device": rec["device"]},
              {"log_z": rec["value"], "log_z_stderr": rec["stderr"], "log_z_agreement_chi2": ag["chi2"],
               "log_z_spread_nats": ag["max_abs_diff"]},
              [], Lineage(model_run_id=bundle.meta.get("mlflow_run_id"), data=open_input(rec["data"])))
    print(f"stored in {args.model}")
    return 0


def _score_files(out: Location, table, t_grid: tuple[float, ...], local_dir: Path) -> tuple[list[Path], Path]:
    """The figures (PNGs) of the scores ``table`` and scores.json as local files, for MLflow. For a
    local ``out`` they are OUT/figures/*.png and OUT/scores.json themselves; for a URL they are
    drawn in (and copied to) ``local_dir``, and the figures uploaded to OUT/figures/."""
    from dsm.scoring.job import OPTIONS_FILE
    from dsm.scoring.summary import figures

    if out.is_local:
        return figures(table, t_grid, out.path / "figures"), out.path / OPTIONS_FILE
    figs = figures(table, t_grid, local_dir / "figures")
    for f in figs:
        (out / "figures" / f.name).upload(f)
    record = local_dir / OPTIONS_FILE
    record.write_bytes((out / OPTIONS_FILE).read_bytes())
    return figs, record


def _data_name(data: str) -> str:
    """The data's last path component, for the run's name (a URL's too: ``s3://b/digits/test`` is test)."""
    from dsm.plumbing.store import Location, is_remote

    return Location.of(data).name if is_remote(data) else Path(data).name


def _score(args: argparse.Namespace) -> int:
    import json
    import tempfile

    from dsm.core.consistency import Options as ConsistencyOptions
    from dsm.data.inputs import open_input
    from dsm.plumbing.store import redact
    from dsm.scoring.columns import ScoreSpec, parse_t_grid
    from dsm.scoring.job import OPTIONS_FILE, PARTS, out_location, score_table, write_json
    from dsm.scoring.summary import format_summary

    spec = ScoreSpec(t_grid=parse_t_grid(args.t_grid), n_noise=args.noise_samples, dequantize=args.dequantize,
                     batch_size=args.batch_size, precision=args.precision)
    if args.actors < 1:
        raise ValueError(f"--actors must be >= 1, got {args.actors}")
    if args.consistency_samples == 1 or args.consistency_samples < 0:
        raise ValueError(f"--consistency-samples must be 0 (skip) or >= 2, got {args.consistency_samples}")
    consistency = ConsistencyOptions() if args.consistency_samples else None
    out = out_location(args.out)  # an HTTP --out is refused here, before a model is fetched
    model, lineage = _model_file(args.model, args.workspace)
    # failures (bad input, a failed job, Ctrl-C) become exit codes in dsm.plumbing.errors.exit_code
    summary, table = score_table(model, args.data, out, spec, actors=args.actors, gpu=args.gpu,
                                 model_label=lineage.model_uri, consistency=consistency,
                                 consistency_samples=args.consistency_samples, restart=args.restart,
                                 address=args.address, resource_timeout_s=args.resource_timeout)
    print(format_summary(summary))
    flat = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
    flat.update({f"logp_db_per_dim_q{k}": v for k, v in summary["logp_db_per_dim_quantiles"].items()})
    flat.update(summary.get("consistency", {}).get("metrics", {}))  # consistency/*, named as in training
    with tempfile.TemporaryDirectory(prefix="dsm-score-") as tmp:  # a URL --out's files, for MLflow
        figs, record = _score_files(out, table, spec.t_grid, Path(tmp))
        lineage.model_run_id = lineage.model_run_id or summary.get("model_mlflow_run_id")
        lineage.model_sha256, lineage.data = summary["model_sha256"], open_input(args.data)
        source = (lineage.model_uri.removeprefix("models:/").replace("/", "-v").replace("@", "-")
                  if lineage.model_uri else Path(model).parent.name)
        rid = _tracking("score", args.workspace, f"score-{source}-{_data_name(args.data)}",
                        {"model": args.model, "data": redact(args.data), "t_grid": list(spec.t_grid),
                         "noise_samples": spec.n_noise, "dequantize": spec.dequantize, "actors": args.actors,
                         "precision": spec.precision, "device": summary["device"]},
                        flat, [record, *figs], lineage)
        if rid:  # the record of the job names the run that logged it (read here: for a URL --out it is in tmp)
            write_json(out / OPTIONS_FILE, {**json.loads(record.read_text()), "mlflow_run_id": rid})
    print(out / PARTS)
    return 0


# dsm.core.precision.PRECISIONS spelled out (a test keeps them equal): importing that module would
# import torch into the parser of every dsm command.
PRECISION_CHOICES = ("fp32", "tf32", "bf16")


def add_precision(parser: argparse.ArgumentParser, what: str) -> None:
    """``--precision``: the arithmetic of the command's network evaluations (dsm.core.precision)."""
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32",
                        help=f"arithmetic of {what}: fp32 (TF32 off), tf32 (TF32 matmuls and convolutions on "
                             "GPUs) or bf16 (the network body in bfloat16, U's sums in float32) (default fp32)")


def register(sub: argparse._SubParsersAction) -> None:
    norm = sub.add_parser("normalize", help="estimate log Z of an exported model on held-out data; store it",
                          description="Estimate log Z at a large t (paired estimator, with its standard error, "
                                      "and the several-t agreement check) and store it in the model file.")
    norm.add_argument("model", help="exported model (dsm train's model.pt)")
    norm.add_argument("--data", required=True, help="held-out data: shard split folder, .npy or image folder")
    norm.add_argument("--samples", type=int, default=2000, help="held-out examples used (default 2000)")
    norm.add_argument("--t", type=float, default=None, help="noise variance (default: the model's t_max)")
    norm.add_argument("--batch-size", type=int, default=256, help="examples per forward pass (default 256)")
    add_precision(norm, "log Z")
    add_gpu_options(norm, "estimate in a Ray task holding one GPU (of --address's cluster, or a local Ray)")
    add_address(norm)
    add_workspace(norm)
    norm.set_defaults(func=_normalize)

    sc = sub.add_parser("score", help="score a whole dataset with Ray Data: log p, NLL, d_eff -> parquet",
                        description="Per-image log p (nats, bits/dim, dB/dim), denoising MSE and d_eff by both "
                                    "estimators on a t grid, as parquet parts under OUT/parts. Re-running the "
                                    "same command finishes an interrupted job. The last line printed is the "
                                    "parquet folder. Columns: docs/scoring.md.")
    sc.add_argument("model", help="exported, normalized model: dsm train's model.pt, or a registered version "
                                   "models:/NAME/VERSION (or models:/NAME@ALIAS) in the workspace's MLflow")
    sc.add_argument("--data", required=True, help="shard split folder (a local path or an s3://, gs:// or "
                                                 "http(s):// URL), .npy or image folder")
    sc.add_argument("--out", required=True, help="output folder (parquet parts, scores.json, figures): a local "
                                                "path or an s3:// or gs:// URL")
    sc.add_argument("--t-grid", default="1e-4:1e2:5",
                    help="noise variances: LO:HI:N log-spaced or a comma list; '' for none (default 1e-4:1e2:5; "
                         "the paper: 1e-12:1e3:100)")
    sc.add_argument("--noise-samples", type=int, default=4, help="K noise draws per image and t (default 4)")
    sc.add_argument("--dequantize", action="store_true", help="also the dequantized NLL (8-bit images)")
    sc.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    sc.add_argument("--restart", action="store_true",
                    help="discard the scores OUT holds (another model, another log Z or other data) and start afresh; "
                         "without it a re-run resumes the same job and refuses a different one")
    sc.add_argument("--consistency-samples", type=int, default=256,
                    help="examples for the self-consistency checks (log Z spread, PF-ODE gap, heat residual), "
                         "run after the job; 0 skips them (default 256; docs/scoring.md)")
    sc.add_argument("--actors", type=int, default=2, help="scoring actors (default 2)")
    add_gpu_options(sc, "one GPU per actor (at most as many actors as the cluster has GPUs); the "
                        "consistency checks then run in a GPU task too")
    add_precision(sc, "scoring; part of the job's identity")
    add_address(sc)
    add_workspace(sc)
    sc.set_defaults(func=_score)
