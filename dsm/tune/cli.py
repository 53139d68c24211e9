"""``dsm tune``: registered into the top-level parser by :func:`register`."""

from __future__ import annotations

import argparse

from dsm.cliopts import add_address, add_storage, add_workspace


def _tune(args: argparse.Namespace) -> int:
    from dsm.tune.run import main

    return main(args.spec, args.overrides, workspace=args.workspace, address=args.address,
                dry_run=args.dry_run, verbose=args.verbose, storage=args.storage)


def register(sub) -> None:
    p = sub.add_parser("tune", help="sweep training configs with Ray Tune (ASHA), tracked in MLflow",
                       description="Run a sweep spec (see tune/): one Ray Train run per trial, early-stopped by "
                                   "ASHA at equal steps, each a child MLflow run of the sweep's run. Re-running "
                                   "the same command resumes the sweep. The last line printed is the best "
                                   "trial's config (best_config.yaml).")
    p.add_argument("spec", help="sweep spec YAML (see tune/)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="spec fields, e.g. samples=8 scheduler.grace_period=200 overrides.steps=1000")
    add_address(p)
    p.add_argument("--dry-run", action="store_true", help="print the trials and their resources; start nothing")
    add_workspace(p)
    add_storage(p, "where the sweep keeps its trials' checkpoints and exports, e.g. s3://bucket/runs (default "
                   "$DSM_STORAGE, else <workspace>/sweeps); on a multi-node cluster a bucket, or a shared folder")
    p.add_argument("--verbose", action="store_true", help="show the training workers' output")
    p.set_defaults(func=_tune)
