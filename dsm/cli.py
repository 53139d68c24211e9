"""The ``dsm`` command line: one entry point, one subcommand per verb, each declared in the
package of its stage (shards -> train -> checkpoint -> normalize -> score -> report):

=====================  =================================================
``dsm data ...``       ``dsm/data/cli.py``
``dsm train``          ``dsm/train/cli.py``
``dsm tune``           ``dsm/tune/cli.py``
``dsm normalize``      ``dsm/scoring/cli.py`` (log Z of a trained model, on held-out data)
``dsm score``          ``dsm/scoring/cli.py``
``dsm report``         ``dsm/report/cli.py``
``dsm sample``         ``dsm/report/cli.py`` (samples to look at, beside the report)
``dsm compare``        ``dsm/report/cli.py`` (training runs side by side, from MLflow)
``dsm submit``/``jobs``  ``dsm/submit/cli.py``
``dsm config schema``     ``dsm/config_cli.py`` (the configs' JSON Schema)
``dsm demo``, ``ui``, ``import``/``export official``: here
=====================  =================================================

Subcommands import their heavy dependencies (torch, MLflow, Ray) lazily so that
``dsm --help`` and config errors are instant. Every command's exceptions become its exit
status in one place, :func:`dsm.plumbing.errors.exit_code`.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from dsm.cliopts import add_workspace

LOOPBACK = "127.0.0.1"


def _demo(args: argparse.Namespace) -> int:
    from dsm.demo import DemoConfig, run_demo
    from dsm.plumbing.config import load_config

    extra = list(args.overrides) + ([f"workspace={args.workspace}"] if args.workspace else [])
    cfg = load_config(DemoConfig, args.config, extra)
    run_demo(cfg, progress=not args.quiet)
    return 0


def _ui(args: argparse.Namespace) -> int:
    """MLflow's server on the workspace's store, in its own process group, stopped as a whole
    however ``dsm ui`` ends (Ctrl-C, SIGTERM, an error). Prints the URL of the experiment's runs."""
    import os
    import signal
    import subprocess

    from dsm.runtime.tracking import tracking_uri, ui_url, workspace_dir

    ws = workspace_dir(args.workspace)
    port = _ui_port(args.host, args.port)
    if args.host != LOOPBACK:
        print(f"dsm ui: serving on {args.host}: anyone who can reach it can read and change the runs "
              "(MLflow's server has no authentication here)", file=sys.stderr, flush=True)
    # before the server starts: reading the store creates a new one's tables, and two processes
    # creating them at once make the server fail on SQLite ("table ... already exists")
    url = ui_url(port, args.experiment, ws, host=args.host)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri(ws),
           "--default-artifact-root", (ws / "artifacts").as_uri(), "--host", args.host,
           "--port", str(port), "--workers", "1"]
    # MLflow 3 starts job consumers for its GenAI features (about 240 MB each); dsm uses none
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(cmd, env=env, start_new_session=True)

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    print(f"MLflow UI: {url} (Ctrl-C to stop)", flush=True)
    try:
        return server.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop_group(server)


def _ui_port(host: str, port: int) -> int:
    """``port`` when it is free on ``host``, else a free one, said on stderr."""
    import socket

    from dsm.runtime.cluster import free_port

    with socket.socket() as s:
        try:
            s.bind((host, port))
            return port
        except OSError:
            pass
    other = free_port()
    print(f"dsm ui: port {port} is in use; serving on {other}", file=sys.stderr, flush=True)
    return other


def _stop_group(proc, grace_s: float = 10.0) -> None:
    """SIGTERM to ``proc``'s whole process group (MLflow's server forks gunicorn and helpers),
    then SIGKILL to whatever is left after ``grace_s``."""
    import os
    import signal
    import time

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, so that a zombie does not keep the group alive
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def _import_official(args: argparse.Namespace) -> int:
    from dsm.official import import_official

    path = import_official(args.src, args.out)  # OfficialCheckpointError is bad input: exit 2
    print(f"imported {args.src} as the `paper` UNet; the bundle is unnormalized (log Z = 0): "
          f"run `dsm normalize {shlex.quote(str(path))} --data HELD_OUT` before scoring")
    print(path)
    return 0


def _export_official(args: argparse.Namespace) -> int:
    from dsm.core.bundle import load_model
    from dsm.official import export_official
    from dsm.train.config import TrainConfig

    b = load_model(args.model)
    cfg = TrainConfig.model_validate(b.config)
    folder = export_official(b.model, cfg, b.shape, args.out, step=int(b.meta.get("step") or 0))
    print(folder)
    return 0


def _register_official(sub: argparse._SubParsersAction) -> None:
    """``dsm import official`` and ``dsm export official``: the paper code's checkpoint layout."""
    imp = sub.add_parser("import", help="import a model from another code base into a dsm bundle")
    isub = imp.add_subparsers(dest="source", required=True, metavar="SOURCE")
    off = isub.add_parser("official", help="the paper's released checkpoints (models/<name>/ of its repository)",
                          description="Read an official DualScoreMatching model folder (args.json and model.pth.tar) "
                                      "without running pickled code, and write a dsm bundle: the energy models on the "
                                      "`paper` UNet, the denoiser as a score model. The last line is the bundle path.")
    off.add_argument("src", help="folder holding args.json and model.pth.tar")
    off.add_argument("--out", required=True, help="bundle file to write (e.g. official-color.pt)")
    off.set_defaults(func=_import_official)
    exp = sub.add_parser("export", help="export a dsm bundle to another code base's layout")
    esub = exp.add_subparsers(dest="target", required=True, metavar="TARGET")
    eoff = esub.add_parser("official", help="the paper code's layout (args.json and model.pth.tar)",
                           description="Write a `paper`-preset dsm model as an official model folder.")
    eoff.add_argument("model", help="dsm model bundle")
    eoff.add_argument("--out", required=True, help="folder to write args.json and model.pth.tar into")
    eoff.set_defaults(func=_export_official)


def build_parser() -> argparse.ArgumentParser:
    from dsm import __version__

    p = argparse.ArgumentParser(prog="dsm", description="Normalized image densities by dual score matching.")
    p.add_argument("--version", action="version", version=f"dsm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    from dsm import config_cli
    from dsm.data import cli as data_cli
    from dsm.report import cli as report_cli
    from dsm.scoring import cli as scoring_cli
    from dsm.submit import cli as submit_cli
    from dsm.train import cli as train_cli
    from dsm.tune import cli as tune_cli

    data_cli.register(sub)
    train_cli.register(sub)
    tune_cli.register(sub)
    config_cli.register(sub)  # config schema
    scoring_cli.register(sub)  # normalize, score
    report_cli.register(sub)  # report, sample, compare
    submit_cli.register(sub, lambda argv: parse_args(build_parser(), argv))  # submit, jobs
    demo = sub.add_parser("demo", help="fit an energy to an exact Gaussian mixture; compare normalized log p",
                          description="Fit an energy to an exact Gaussian mixture and compare normalized log p "
                                      "with the exact one. Settings: dsm.demo.DemoConfig, as key=value.")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. dim=16 steps=4000 form=scalar")
    demo.add_argument("--config", help="YAML file with DemoConfig fields (default: DemoConfig's defaults)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    add_workspace(demo)
    demo.set_defaults(func=_demo)

    ui = sub.add_parser("ui", help="serve the MLflow UI for the workspace (on 127.0.0.1 unless --host)",
                        description="Serve the MLflow UI for the workspace's store and print the URL of an "
                                    "experiment's runs (MLflow's model-training view).")
    ui.add_argument("--host", default=LOOPBACK,
                    help=f"address to listen on (default {LOOPBACK}: this machine only; 0.0.0.0 serves every "
                         "network this machine is on, without authentication)")
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000; a free one when it is in use)")
    ui.add_argument("--experiment", default="dsm-train",
                    help="experiment whose runs the printed URL opens (default dsm-train; dsm-tune, dsm-score, ...)")
    add_workspace(ui)
    ui.set_defaults(func=_ui)
    _register_official(sub)
    return p


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse with ``key=value`` overrides accepted anywhere on the line, also after options
    (``dsm train CONFIG --workspace W steps=120``): argparse's ``nargs="*"`` positional takes only
    the run before the first option, and ``parse_intermixed_args`` does not support subcommands."""
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]  # after the earlier ones: later overrides win
    return args


def _quiet_mlflow() -> None:
    """MLflow's INFO lines (creating a store's tables, validating an input example) and its
    download progress bars are not for dsm's users: warnings and errors only, unless the user
    sets MLFLOW_LOGGING_LEVEL. Set before MLflow is imported, which reads them then."""
    import logging
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    level = os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(level.upper())  # when MLflow is imported already


# The subcommand's own action, for messages: `dsm data prepare: ...`, `dsm import official: ...`
SUBCOMMAND_DESTS = ("data_command", "source", "target", "action")


def command_label(args: argparse.Namespace) -> str:
    """``data prepare``, ``import official``, ``train``: how messages name the command."""
    sub = next((getattr(args, d) for d in SUBCOMMAND_DESTS if getattr(args, d, None)), None)
    return f"{args.command} {sub}" if sub else args.command


def main(argv: list[str] | None = None) -> int:
    from dsm.plumbing.errors import exit_code

    _quiet_mlflow()
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.command is None:  # `dsm` alone: what it can do
        parser.print_help()
        return 0
    return exit_code(command_label(args), lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
