"""``dsm train``: registered into the top-level parser by :func:`register`."""

from __future__ import annotations

import argparse

from dsm.cliopts import add_address, add_storage, add_workspace


def _train(args: argparse.Namespace) -> int:
    from dsm.train.run import main

    return main(args.config, args.overrides, workspace=args.workspace, address=args.address,
                workers=args.workers, gpu=args.gpu, quiet=args.quiet, register=args.register,
                storage=args.storage, print_config=args.print_config, dry_run=args.dry_run, resume=args.resume)


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train an energy (or score) model on Ray Train, tracked in MLflow",
                           description="Train on Ray Train (DDP across workers), tracked in MLflow. Re-running "
                                       "the same command resumes the run from its last checkpoint. The last line "
                                       "printed is the exported model's path.")
    train.add_argument("config", help="a training config: a YAML file, or the name of a built-in one (digits-smoke, "
                       "mnist-cpu, imagenet64-paper, ...: see configs/)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. steps=500 optim.lr=1e-3")
    add_address(train)
    train.add_argument("--workers", type=int, default=None,
                       help="training workers (scaling.workers; default: the config's)")
    train.add_argument("--gpu", action="store_true", help="one GPU per worker (scaling.gpu=true)")
    train.add_argument("--register", metavar="NAME", default=None,
                       help="register the exported model in MLflow's model registry as a new version of NAME "
                            "(then `dsm score models:/NAME/VERSION ...`; default: not registered)")
    add_workspace(train)
    add_storage(train)
    train.add_argument("--quiet", action="store_true", help="no data-preparation progress bar")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved config (every field, defaults included) as YAML and exit; "
                            "starts and writes nothing")
    train.add_argument("--dry-run", action="store_true",
                       help="say what would happen (the run, new or resumed and from which step, the data, the "
                            "workers, the outputs) and exit; prepares, starts and writes nothing")
    train.add_argument("--resume", metavar="NAME", default=None,
                       help="continue the run NAME (its folder under the workspace's runs, or --storage) with this "
                            "config, e.g. with more steps; the same as name=NAME, but the run must exist "
                            "(default: the run named by the config, resumed when it exists)")
    train.set_defaults(func=_train)
