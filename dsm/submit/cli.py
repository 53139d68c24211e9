"""``dsm submit`` and ``dsm jobs``: registered into the top-level parser by :func:`register`.

Exit status: 0 success, 1 the job failed or was stopped, 2 bad input (no or unreachable
address, unknown job id, an invalid command or config), 130 Ctrl-C while following (the job
goes on). ``dsm submit --no-wait`` prints the submission id as its last line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dsm.cliopts import add_address, add_workspace


def _err(cmd: str, msg: str) -> int:
    print(f"dsm {cmd}: {msg}", file=sys.stderr)
    return 2


def _check_command(argv: list[str], root: Path, parse) -> None:
    """Parse the command with dsm's own parser (``parse``: argv -> Namespace, given by dsm.cli,
    which registers this command), and validate a training config, before anything is
    uploaded: a typo fails here with status 2, not minutes later on the cluster. Runs in
    ``root``, as the job will (its working_dir)."""
    from contextlib import chdir

    from dsm.submit.runtime_env import SubmitError

    if argv[0] in ("submit", "jobs"):
        raise SubmitError(f"`dsm {argv[0]}` runs here, not on the cluster")
    try:
        args = parse(argv)
    except SystemExit:
        raise SubmitError(f"not a valid dsm command: dsm {' '.join(argv)} (usage above)") from None
    if args.command == "train":
        from dsm.plumbing.config import load_config
        from dsm.train.config import TrainConfig

        extra = list(args.overrides)
        if args.workers is not None:
            extra.append(f"scaling.workers={args.workers}")
        with chdir(root):
            load_config(TrainConfig, args.config, extra)  # ConfigError -> status 2, naming the field


def _submit(args: argparse.Namespace) -> int:
    from dsm.plumbing.config import ConfigError
    from dsm.submit import client as jc
    from dsm.submit.ids import decide, submission_base
    from dsm.submit.runtime_env import (
        UPLOAD_LIMIT_MB,
        SubmitError,
        build_runtime_env,
        check_upload,
        entrypoint,
        normalize_command,
        package_version,
        project_root,
    )

    try:
        url = jc.resolve_address(args.address)
        local = jc.is_local(url)
        root = project_root()
        cmd = normalize_command(args.command, root, local)
        _check_command(cmd.argv, root, args.parse_dsm_command)
        runtime_env, env, warnings = build_runtime_env(root, local=local, workspace=args.workspace,
                                                       env_pip=args.env_pip)
        upload = check_upload(root, runtime_env["excludes"], args.upload_limit or UPLOAD_LIMIT_MB)
        client = jc.connect(url)
        base = submission_base(cmd.argv, cmd.file_digests, env.get("DSM_WORKSPACE"))
        action, sid = decide(base, jc.statuses(client), rerun=args.rerun)
    except (SubmitError, ConfigError) as e:
        return _err("submit", str(e))
    for w in cmd.warnings + warnings:
        print(f"dsm submit: warning: {w}", file=sys.stderr)
    if action == "attach":
        status = str(client.get_job_status(sid))
        print(f"dsm submit: the same command is already job {sid} ({status}); attaching to it", flush=True)
    else:
        ep = entrypoint(cmd.argv)
        meta = {"dsm_version": package_version(root), "dsm_argv": " ".join(cmd.argv)}
        print(f"dsm submit: uploading {root} ({upload / 2**20:.1f} MB) as the job's working_dir", flush=True)
        client.submit_job(entrypoint=ep, submission_id=sid, runtime_env=runtime_env, metadata=meta)
        print(f"dsm submit: submitted job {sid} to {url}: {ep}", flush=True)
    if args.no_wait:
        print(sid)
        return 0
    try:
        status = jc.follow(client, sid) if args.follow else jc.wait(client, sid)
    except KeyboardInterrupt:
        print(f"\ndsm submit: stopped following; job {sid} goes on (`dsm jobs logs {sid} --follow`, "
              f"`dsm jobs stop {sid}`)", file=sys.stderr)
        return 130
    print(f"job {sid}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _jobs(args: argparse.Namespace) -> int:
    from dsm.submit import client as jc
    from dsm.submit.runtime_env import SubmitError

    try:
        client = jc.connect(args.address)
        if args.action == "list":
            return _list(client)
        info = jc.job_info(client, args.id)
    except SubmitError as e:
        return _err(f"jobs {args.action}", str(e))
    if args.action == "status":
        print(f"{args.id}: {info.status}" + (f" ({info.message})" if info.message else ""))
    elif args.action == "logs":
        if args.follow:
            try:
                jc.follow(client, args.id)
            except KeyboardInterrupt:
                return 130
        else:
            sys.stdout.write(client.get_job_logs(args.id))
    elif args.action == "stop":
        if client.stop_job(args.id):
            print(f"{args.id}: stop requested")
        else:
            print(f"{args.id}: already ended ({client.get_job_status(args.id)})")
    return 0


def _list(client) -> int:
    from datetime import datetime

    jobs = sorted((j for j in client.list_jobs() if j.submission_id), key=lambda j: j.start_time or 0)
    for j in jobs:
        start = datetime.fromtimestamp(j.start_time / 1000).strftime("%Y-%m-%d %H:%M") if j.start_time else "-"
        print(f"{j.submission_id:36s} {j.status!s:10s} {start:16s} {j.entrypoint}")
    if not jobs:
        print("no jobs")
    return 0


def register(sub: argparse._SubParsersAction, parse_dsm_command) -> None:
    """Add ``dsm submit`` and ``dsm jobs`` to the top-level subparsers. ``parse_dsm_command``
    (argv -> Namespace) parses the command to submit, as the top-level parser would."""
    addr_help = "the cluster's Ray dashboard, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)"
    s = sub.add_parser(
        "submit", help="run a dsm command on a Ray cluster as a Ray Job",
        usage="dsm submit [--address ADDR] [--workspace WS] [--no-wait | --follow] [--env-pip] [--rerun] "
              "-- dsm COMMAND ...",
        description="Upload this project as the job's working_dir and run `dsm COMMAND ...` on the cluster. "
                    "The submission id is derived from the command, its files and the workspace, so "
                    "re-submitting the same command attaches to it while it runs, and re-submits it (as "
                    "<id>-r1, -r2, ...; training resumes from its checkpoints) after it failed or was stopped.")
    add_address(s, addr_help)
    add_workspace(s, help="the job's workspace (a local cluster: default ./dsm-runs here; a remote one: an absolute "
                        "path on its shared storage, default the cluster's $DSM_WORKSPACE)")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--no-wait", action="store_true", help="print the submission id and return")
    mode.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    s.add_argument("--env-pip", action="store_true",
                   help="install dsm's dependencies (pyproject.toml) into the job's runtime_env; off by default: "
                        "the cluster's Python has them (cluster/ images, or a local cluster sharing this venv)")
    s.add_argument("--rerun", action="store_true", help="run again even if the same command already succeeded")
    s.add_argument("--upload-limit", type=float, default=None, metavar="MB",
                   help="refuse a working_dir upload above this size (default 100 MB; data, outputs, weights "
                        "and secrets are never uploaded, and .dsmignore excludes more)")
    s.add_argument("command", nargs=argparse.REMAINDER, help="-- dsm COMMAND [ARGS ...]")
    s.set_defaults(func=_submit, parse_dsm_command=parse_dsm_command)

    j = sub.add_parser("jobs", help="list, inspect, follow or stop jobs on a Ray cluster")
    jsub = j.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_ in (("list", "the cluster's submitted jobs"), ("status", "a job's status"),
                        ("logs", "a job's logs"), ("stop", "stop a job")):
        p = jsub.add_parser(name, help=help_)
        if name != "list":
            p.add_argument("id", help="submission id (dsm-... or raysubmit_...)")
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="stream until the job ends")
        add_address(p, addr_help)
        p.set_defaults(func=_jobs)
