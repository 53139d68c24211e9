"""The Ray runtime_env of a submitted dsm command: code, dependencies and environment.

- ``working_dir``: the project root (the folder with dsm's ``pyproject.toml``), uploaded to the
  cluster; the job runs ``python -m dsm.cli ...`` inside it, so the driver and every Ray
  worker import *this* checkout's dsm. Run outputs, the virtualenv, git data, caches and
  weights are excluded (:data:`EXCLUDES`, plus the workspace when it lies inside the project).
- ``pip`` (only with ``--env-pip``): dsm's dependencies from ``pyproject.toml``, installed by
  Ray into a virtualenv layered over the cluster's Python. Off by default: the cluster images
  and ``ray up`` setup in ``cluster/`` install dsm already, and a local cluster shares the venv.
- ``env_vars``: ``DSM_WORKSPACE`` and ``MLFLOW_TRACKING_URI`` when known (a local cluster gets
  the same workspace and SQLite store that ``dsm ui`` reads here; a remote one keeps the values
  its own environment sets unless this machine names a server), and ``DSM_SHARED_STORAGE``,
  ``DSM_STORAGE`` and ``DSM_ARTIFACT_ROOT`` when set here; never credentials.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from dsm.runtime.storage import SHARED_ENV, STORAGE_ENV
from dsm.runtime.tracking import ARTIFACT_ROOT_ENV

FORWARDED = (SHARED_ENV, STORAGE_ENV, ARTIFACT_ROOT_ENV)

# gitignore-style patterns, relative to the working_dir (Ray also honours .gitignore): code and
# configs go up; environments, caches, run outputs, weights and data stay here (a job reads its
# data from the cluster's storage, docs/cluster.md).
EXCLUDES = [".git/", ".venv/", "venv/", "__pycache__/", "*.pyc", ".pytest_cache/", ".ruff_cache/",
            "*.egg-info/", "build/", "dsm-runs/", "mlruns/", "mlartifacts/", "mlflow.db", "ray_results/",
            "*.pt", "*.pth", "*.ckpt", "*.safetensors",
            "data/", "scores/", "*.npy", "*.npz", "*.parquet", "*.tar", "*.tar.gz", "*.tgz", "*.zip",
            "*.pkl", "*.pkl.gz", "*.pickle", "*.h5", "*.hdf5"]
# Secrets: appended after the user's .dsmignore, so that no "!" line there can ship them.
SECRETS = [".env", ".env.*", "!.env.example", "*.pem", "*.key", ".netrc", ".pypirc", ".aws/", ".ssh/",
           "credentials.json", "*.kubeconfig"]
DSMIGNORE = ".dsmignore"  # the project's own additions, gitignore syntax ("!small.npy" re-includes)
UPLOAD_LIMIT_MB = 100.0  # far above dsm's code and configs (about 2 MB); Ray itself refuses 500 MiB


class SubmitError(Exception):
    """Bad input to ``dsm submit`` / ``dsm jobs`` (exit status 2); the message says what and where."""


def project_root(start: Path | None = None) -> Path:
    """The folder holding dsm's ``pyproject.toml``: above the dsm package, else the current directory."""
    for d in [(start or Path(__file__)).resolve(), *(start or Path(__file__)).resolve().parents]:
        py = d / "pyproject.toml"
        if py.is_file() and (d / "dsm").is_dir():
            return d
    return Path.cwd()


def dependencies(root: Path) -> list[str]:
    """``[project].dependencies`` of ``root/pyproject.toml`` (the pip list for ``--env-pip``)."""
    import tomllib

    py = root / "pyproject.toml"
    try:
        return list(tomllib.loads(py.read_text())["project"]["dependencies"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        raise SubmitError(f"--env-pip: cannot read [project].dependencies from {py} ({e})") from None


def package_version(root: Path) -> str:
    """``[project].version`` of ``root/pyproject.toml``, else the installed dsm's version."""
    import tomllib

    try:
        return tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        from importlib.metadata import version

        return version("dsm")


@dataclass
class Command:
    """A dsm command as the job will run it: argv rewritten for the working_dir, plus the
    contents' digests of the files it names (for the submission id)."""

    argv: list[str]
    file_digests: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def normalize_command(argv: list[str], root: Path, local: bool) -> Command:
    """Strip a leading ``dsm``; rewrite arguments naming existing files: relative to ``root``
    when inside it (they travel in the working_dir), absolute otherwise (valid on a local
    cluster; on a remote one they must exist there, and a warning says so)."""
    argv = list(argv)
    if argv and argv[0] in ("--",):
        argv = argv[1:]
    if argv and Path(argv[0]).name == "dsm":
        argv = argv[1:]
    if not argv:
        raise SubmitError("no command to submit: give it after `--`, e.g. dsm submit -- dsm train CONFIG.yaml")
    out = Command(argv=[argv[0]])
    for arg in argv[1:]:
        p = Path(arg)
        if not p.is_absolute() and not p.is_file() and (root / p).is_file():
            p = root / p  # e.g. configs/x.yaml named from outside the project folder
        if arg.startswith("-") or "=" in arg or not p.is_file():
            out.argv.append(arg)
            continue
        full = p.resolve()
        digest = hashlib.sha256(full.read_bytes()).hexdigest()
        try:
            new = full.relative_to(root).as_posix()
        except ValueError:
            new = str(full)
            if not local:
                out.warnings.append(f"{arg} is outside the uploaded project {root}; the job reads {new} on the cluster")
        out.argv.append(new)
        out.file_digests[new] = digest
    return out


def is_sqlite_or_file(uri: str) -> bool:
    """A tracking URI that names a file on the machine that opens it (``databricks`` and http(s) do not)."""
    return uri.startswith(("sqlite:", "file:", "/", "./", "../"))


def build_runtime_env(root: Path, *, local: bool, workspace: str | None = None, env_pip: bool = False,
                      environ: dict[str, str] | None = None) -> tuple[dict, dict[str, str], list[str]]:
    """Returns ``(runtime_env, env_vars, warnings)`` for a job from ``root``.

    ``workspace``: ``--workspace`` as given. On a local cluster it defaults to this machine's
    workspace (``./dsm-runs`` or ``$DSM_WORKSPACE``) and becomes absolute; on a remote one it
    must be absolute (a path on the cluster's shared storage), or be left to the cluster's
    own ``$DSM_WORKSPACE``.
    """
    from dsm.runtime.tracking import workspace_dir

    environ = dict(os.environ if environ is None else environ)
    env: dict[str, str] = {}
    warnings: list[str] = []
    ws: Path | None = None
    if local:
        ws = workspace_dir(workspace)
        env["DSM_WORKSPACE"] = str(ws)
    elif workspace:
        if not workspace.startswith("/"):
            raise SubmitError(f"--workspace {workspace!r}: on a remote cluster give an absolute path on its "
                              "shared storage (a relative one would land in the job's temporary folder)")
        env["DSM_WORKSPACE"] = workspace
    else:
        warnings.append("no --workspace: the job uses the cluster's $DSM_WORKSPACE (the cluster/ specs set it), "
                        "else ./dsm-runs inside its temporary working_dir")

    uri = environ.get("MLFLOW_TRACKING_URI")
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
        if not local and is_sqlite_or_file(uri):
            warnings.append(f"MLFLOW_TRACKING_URI={uri} is a local file store but the cluster is remote: the job "
                            "writes to a file on the cluster, not the store `dsm ui` reads here; run an MLflow "
                            "server (cluster/mlflow/) and set MLFLOW_TRACKING_URI=http://...")
    elif local:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{ws / 'mlflow.db'}"  # dsm.runtime.tracking's embedded default
    # Where runs and artifacts live: properties of the cluster, forwarded when set here. Credentials
    # never are (AWS_*, GOOGLE_*): the cluster's nodes hold their own (docs/cluster.md).
    for name in FORWARDED:
        if environ.get(name):
            env[name] = environ[name]

    excludes = upload_excludes(root, ws)
    runtime_env: dict = {"working_dir": str(root), "excludes": excludes, "env_vars": env}
    if env_pip:
        runtime_env["pip"] = dependencies(root)
    return runtime_env, env, warnings


def upload_excludes(root: Path, workspace: Path | None = None) -> list[str]:
    """The working_dir's exclude patterns: :data:`EXCLUDES`, the workspace and any other folder
    holding an ``mlflow.db`` (a dsm workspace under a non-default name), the project's
    ``.dsmignore``, and :data:`SECRETS` last."""
    excludes = list(EXCLUDES)
    spaces = [workspace] if workspace is not None else []
    spaces += [db.parent for db in root.glob("*/mlflow.db")] + [db.parent for db in root.glob("*/*/mlflow.db")]
    for ws in spaces:
        try:
            rel = ws.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            continue
        if rel != ".":
            excludes.append(f"/{rel}/")
    ignore = root / DSMIGNORE
    if ignore.is_file():
        excludes += [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return excludes + SECRETS


def upload_size(root: Path, excludes: list[str]) -> tuple[int, list[tuple[int, str]]]:
    """(bytes, [(bytes, path)] largest first) of what Ray would upload: ``root`` minus ``excludes``
    and the root ``.gitignore``, matched with gitignore rules (pathspec; Ray applies the same
    syntax, and like git it never descends into an excluded folder, so "!" cannot re-include a
    file below one).
    Paths are files, and folders summed over their files, relative to root."""
    import pathspec

    lines = list(excludes)
    if (root / ".gitignore").is_file():
        lines = (root / ".gitignore").read_text().splitlines() + lines  # ours come later and win
    spec = pathspec.GitIgnoreSpec.from_lines(lines)
    total, sizes = 0, {}
    for folder, dirs, files in os.walk(root):
        rel_dir = Path(folder).relative_to(root)
        dirs[:] = [d for d in dirs if not spec.match_file(f"{(rel_dir / d).as_posix()}/")]
        for f in files:
            rel = (rel_dir / f).as_posix()
            if spec.match_file(rel):
                continue
            n = (Path(folder) / f).stat().st_size
            total += n
            top = rel.split("/")[0] + ("/" if "/" in rel else "")
            sizes[top] = sizes.get(top, 0) + n
    return total, sorted(((n, p) for p, n in sizes.items()), reverse=True)


def check_upload(root: Path, excludes: list[str], limit_mb: float = UPLOAD_LIMIT_MB) -> int:
    """The upload's size in bytes; SubmitError naming the biggest paths when it is over ``limit_mb``."""
    total, biggest = upload_size(root, excludes)
    if total > limit_mb * 2**20:
        top = ", ".join(f"{p} ({n / 2**20:.1f} MB)" for n, p in biggest[:4])
        raise SubmitError(f"the working_dir upload from {root} would be {total / 2**20:.1f} MB, over the "
                          f"{limit_mb:g} MB limit; biggest: {top}. Exclude paths in {root / DSMIGNORE} "
                          f"(gitignore syntax) or raise --upload-limit")
    return total


def entrypoint(argv: list[str]) -> str:
    """The job's shell command: this checkout's dsm (from the working_dir) under the cluster's ``python``."""
    import shlex

    # `python` on the cluster, not sys.executable: interpreter paths differ between machines.
    return "python -m dsm.cli " + shlex.join(argv)
