"""``dsm tune``: registered into the top-level parser by :func:`register`."""

from __future__ import annotations

import argparse
import sys


def _tune(args: argparse.Namespace) -> int:
    from dsm.config import ConfigError
    from dsm.sweep.run import main

    try:
        return main(args.spec, args.overrides, workspace=args.workspace, address=args.address,
                    dry_run=args.dry_run, verbose=args.verbose)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - Ray's failure types vary; the message is what matters
        print(f"dsm tune: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def register(sub) -> None:
    p = sub.add_parser("tune", help="sweep training configs with Ray Tune (ASHA), tracked in MLflow",
                       description="Run a sweep spec (see tune/): one Ray Train run per trial, early-stopped by "
                                   "ASHA at equal steps, each a child MLflow run of the sweep's run. Re-running "
                                   "the same command resumes the sweep. The last line printed is the best "
                                   "trial's config (best_config.yaml).")
    p.add_argument("spec", help="sweep spec YAML (see tune/)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="spec fields, e.g. samples=8 scheduler.grace_period=200 overrides.steps=1000")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--dry-run", action="store_true", help="print the trials and their resources; start nothing")
    p.add_argument("--workspace", default=None, help="workspace folder (default ./dsm-runs)")
    p.add_argument("--verbose", action="store_true", help="show the training workers' output")
    p.set_defaults(func=_tune)
