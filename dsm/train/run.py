"""The driver of ``dsm train``: validate, prepare data, start or join Ray, fit, export.

Everything that can be wrong with the config or the data is checked before Ray or MLflow is
touched. The run name is deterministic (the config's stem and fingerprint, or ``name``), and
Ray Train keeps checkpoints under ``<workspace>/runs/<name>``: re-running the same command
resumes from the last checkpoint, and the MLflow run with that name continues.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from dsm.core.step import NonFiniteTraining
from dsm.plumbing.config import ConfigError
from dsm.plumbing.fileio import exclusive
from dsm.plumbing.store import Location
from dsm.runtime.storage import storage_root
from dsm.train.config import TrainConfig
from dsm.train.outputs import BEST_FILE, ERROR_LOG, MODEL_FILE, RunOutputs
from dsm.train.resume import check_resumable


@dataclass(frozen=True)
class Plan:
    """A validated run: the resolved config, its name, its folder on the driver and where Ray
    Train keeps its checkpoints and rank 0 publishes its outputs (the folder itself, or
    ``<storage>/<name>``: dsm.train.outputs)."""

    cfg: TrainConfig
    name: str
    workspace: Path
    run_dir: Path
    shape: tuple[int, ...]
    outputs: RunOutputs

    @classmethod
    def of(cls, cfg: TrainConfig, name: str, workspace: Path, run_dir: Path, shape: tuple[int, ...],
           storage: Location | None) -> Plan:
        """The plan of run ``name`` from ``run_dir``, published under ``storage`` when given: the one
        constructor of ``dsm train`` and ``dsm tune``'s trials."""
        return cls(cfg, name, workspace, run_dir, shape, RunOutputs.of(name, run_dir, storage))

    @property
    def out(self) -> Location:
        """Where the checkpoints and the published outputs are."""
        return self.outputs.out

    @property
    def published_elsewhere(self) -> bool:
        """The outputs are published away from the run folder (``--storage``), and fetched back."""
        return self.out != Location.of(self.run_dir)

    @property
    def export_path(self) -> Path:
        """The finished run's model.pt in the run folder."""
        return self.run_dir / MODEL_FILE


def plan(cfg: TrainConfig, workspace: str | Path | None = None, stem: str = "train",
         progress: bool = True, storage: str | None = None) -> Plan:
    """Resolve the data (preparing a built-in data set once) and check that the model builds.
    storage: where the runs' checkpoints and exports go (a folder or URL; default
    ``$DSM_STORAGE``, else ``<workspace>/runs``). Raises ConfigError; starts nothing."""
    from dsm.runtime.tracking import workspace_dir
    from dsm.train.build import check_buildable, resolve_data

    storage = storage_root(storage)  # before the data is prepared: a bad --storage fails at once
    ws = workspace_dir(workspace)
    cfg = resolve_data(cfg, ws, progress=progress)
    shape = check_buildable(cfg)  # GPUs are the cluster's business: checked once Ray is joined
    name = cfg.run_name(stem)
    p = Plan.of(cfg, name, ws, ws / "runs" / name, shape.shape, Location.of(storage) if storage else None)
    check_resumable(cfg, p.out)
    return p


def check_local_resources(cfg: TrainConfig) -> None:
    """Before a local Ray starts (no --address, no $RAY_ADDRESS): the workers must fit this
    machine, CPUs and GPUs (else Ray would wait forever)."""
    need = cfg.scaling.workers * cfg.scaling.cpus_per_worker
    have = os.cpu_count() or 1
    if need > have:
        raise ConfigError(f"scaling: {cfg.scaling.workers} workers x {cfg.scaling.cpus_per_worker:g} CPUs = "
                          f"{need:g} CPUs, but this machine has {have}; lower scaling.workers or "
                          "scaling.cpus_per_worker, or give --address of a cluster")
    if cfg.scaling.gpu:
        from dsm.runtime.cluster import check_local_gpus

        check_local_gpus(cfg.scaling.workers, "scaling.gpu")


def open_tracking(p: Plan, extra_tags: dict[str, str] | None = None,
                  command: str = "train") -> tuple[str, dict[str, str], str | None]:
    """The tracking URI, the run's tags, and its MLflow run id (found by name on a resume;
    None when tracking is off or unreachable). ``extra_tags`` go on a new run only (a sweep
    trial's parent link, for one). The training and evaluation data are the run's dataset
    inputs."""
    import ray

    from dsm.data.inputs import open_input
    from dsm.runtime.tracking import best_effort, flatten, git_commit, log_dataset, open_run, tracking_uri

    cfg = p.cfg
    uri = tracking_uri(p.workspace)
    data = {"training": open_input(cfg.data.path)}
    if cfg.data.eval_path:
        data["evaluation"] = open_input(cfg.data.eval_path)
    tags = {"dsm.git_commit": git_commit(), "dsm.ray_version": ray.__version__,
            "dsm.data_manifest_sha256": data["training"].digest()[:16], "dsm.data_path": cfg.data.path}
    run_id = None
    if cfg.tracking.enabled:
        run_id = open_run(cfg.tracking.experiment, p.name, uri, p.workspace,
                          flatten(cfg.model_dump(mode="json")), {**tags, **(extra_tags or {})}, command)
    if run_id is not None:
        def log(client) -> None:
            for context, inp in data.items():
                log_dataset(client, run_id, inp, context)

        best_effort(command, uri, log, "the run shows no dataset")
    return uri, tags, run_id


def make_trainer(p: Plan, uri: str, run_id: str | None, tags: dict[str, str], callbacks: list | None = None):
    """The TorchTrainer of a planned run. Its RunConfig(name, storage_path) is deterministic, so
    a new trainer for the same plan resumes from the run's last checkpoint."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from dsm.train.loop import train_loop

    cfg = p.cfg
    p.run_dir.mkdir(parents=True, exist_ok=True)
    resources = cfg.scaling.worker_resources()
    return TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "run_name": p.name, "tracking_uri": uri,
                           "mlflow_run_id": run_id, "outputs": p.out.url, "tags": tags},
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.scaling.workers, use_gpu=cfg.scaling.gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=p.name, storage_path=p.out.parent.url,  # a folder, or a URL Ray Train writes through pyarrow
            callbacks=[failure_callback(cfg.scaling.max_failures), *(callbacks or [])],
            checkpoint_config=_checkpoint_config(cfg),
            failure_config=ray.train.FailureConfig(max_failures=cfg.scaling.max_failures),
            logging_config=ray.train.LoggingConfig(log_level="WARNING")),  # our own progress lines suffice
    )


def failure_callback(max_failures: int):
    """The Ray Train callback (run in its controller) that handles a worker's failure:
    - bad input (a shard corrupted at its full size, found only when read) ends the run at once,
      instead of ``max_failures`` retries that would fail the same way: Ray Train V2 retries
      every worker error alike and offers no failure policy of one's own, but an exception
      raised in a callback ends the run (as a ControllerError);
    - anything else (a lost worker or node) is retried by Ray Train: one line says so, in place
      of the ranks' tracebacks (quiet_ray_train_logs)."""
    import ray.train

    from dsm.plumbing.errors import bad_input_among, short_cause
    from dsm.runtime.console import quiet_ray_train_logs

    class FailureReport(ray.train.UserCallback):
        failures = 0

        def after_exception(self, run_context, worker_exceptions):
            quiet_ray_train_logs()  # before Ray Train tears the group down, which logs a page
            failure = bad_input_among(worker_exceptions)
            if failure is not None:
                raise failure
            self.failures += 1
            causes = "; ".join(f"rank {r}: {short_cause(e, 160)}" for r, e in sorted(worker_exceptions.items()))
            verdict = ("restarting from the last checkpoint" if self.failures <= max_failures
                       else "giving up (scaling.max_failures)")
            print(f"dsm train: worker failure {self.failures} of {max_failures} allowed ({causes}); {verdict}",
                  file=sys.stderr, flush=True)

    return FailureReport()


def _checkpoint_config(cfg: TrainConfig):
    """Keep ``num_to_keep`` checkpoints: the best by held-out NLL when it is measured (Ray keeps
    the latest one too, for resuming), else the most recent."""
    import ray.train

    from dsm.train.loop import SELECTED_BY

    if cfg.model.kind == "energy" and cfg.eval.enabled:
        return ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep,
                                          checkpoint_score_attribute=SELECTED_BY, checkpoint_score_order="min")
    return ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep)


def outcome(p: Plan, result) -> Path:
    """The exported model after ``fit()``, from its Result (rank 0's return value, see
    dsm.train.loop.train_loop); raises NonFiniteTraining or RuntimeError otherwise."""
    ended = getattr(result, "return_value", None) or {}
    if ended.get("status") == "non_finite":
        raise NonFiniteTraining(ended.get("message", "non-finite steps"))
    if p.published_elsewhere and ended.get("status") == "finished":
        p.outputs.fetch(p.run_dir)
    if ended.get("status") != "finished" or not p.export_path.is_file():
        raise RuntimeError(f"training ended without an exported model at {p.export_path} "
                           f"(status {ended.get('status') or 'none'})")
    return p.export_path


def train(p: Plan, address: str | None = None, log_to_driver: bool = True, register: str | None = None) -> Path:
    """Run (or resume) the planned training on Ray Train (dsm.runtime.driver's sequence); returns
    the exported model's path, which is also logged as the run's MLflow model (and registered
    as a version of ``register``). Raises dsm.plumbing.errors.JobFailed, Interrupted or NonFiniteTraining."""
    from dsm.runtime.driver import Job, Tracking, drive
    from dsm.runtime.resources import Demand
    from dsm.runtime.tracking import tracking_uri

    scaling = p.cfg.scaling
    job = Job("train", address, storage=p.out.parent.url, error_log=p.run_dir / ERROR_LOG,
              resume_hint=f"re-run the same command to resume {p.name!r} from its last checkpoint",
              check_local=lambda: check_local_resources(p.cfg), log_to_driver=log_to_driver,
              demand=Demand(scaling.worker_resources(), scaling.workers), resource_timeout_s=scaling.resource_timeout_s)
    opened: dict = {}

    def open_run() -> str | None:
        opened["uri"], opened["tags"], run_id = open_tracking(p)
        return run_id

    def fit(run_id: str | None) -> Path:
        export = outcome(p, _fit_interruptibly(make_trainer(p, opened["uri"], run_id, opened["tags"])))
        publish_model(opened["uri"], run_id, export, register)
        return export

    # NonFiniteTraining: rank 0 has closed the run (FAILED, with dsm.stop_reason)
    return drive(job, fit, Tracking(tracking_uri(p.workspace), open_run, closes_itself=(NonFiniteTraining,)))


def publish_model(uri: str, run_id: str | None, export: Path, register: str | None = None) -> str | None:
    """The exported bundle as the run's MLflow model (dsm.runtime.mlmodel), and a new version of
    registered model ``register`` when given; returns its ``models:/`` URI. Best effort: the
    model file is the result, so an MLflow failure here is one line, not a failed run."""
    from dsm.plumbing.fileio import sha256_file
    from dsm.runtime.tracking import best_effort

    if run_id is None:
        if register:
            print(f"dsm train: MLflow tracking is off or unreachable; {register!r} not registered", file=sys.stderr)
        return None

    def publish(client) -> str:
        from dsm.runtime import mlmodel

        model_id = mlmodel.log_bundle(client, run_id, export, sha256_file(export))
        if not register:
            return f"models:/{model_id}"
        version = mlmodel.register(client, register, model_id, run_id)
        print(f"dsm train: registered as models:/{register}/{version}", flush=True)
        return f"models:/{register}/{version}"

    return best_effort("train", uri, publish, f"the model is only in {export}")


def _fit_interruptibly(trainer):
    """``trainer.fit()`` in a helper thread, so that Ctrl-C reaches us as KeyboardInterrupt.

    In the main thread Ray Train installs its own SIGINT handler, which exits the process with
    status 1 and no message. Off the main thread it does not (as under Tune); the run's actors
    belong to this driver and stop when it exits, and the checkpoints already written stay.
    """
    import threading

    box: dict = {}

    def target() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    th = threading.Thread(target=target, name="dsm-train-fit", daemon=True)
    th.start()
    while th.is_alive():
        th.join(0.25)
    if "error" in box:
        raise box["error"]
    return box["result"]


def print_summary(p: Plan, export: Path) -> None:
    """Where things are; the export path comes last (scripts read the last line)."""
    from dsm.core.bundle import load_model
    from dsm.runtime.tracking import tracking_uri
    from dsm.train.loop import SELECTED_BY

    b = load_model(export)
    if b.normalization:
        print(f"log Z = {b.normalization['value']:.4f} +- {b.normalization['stderr']:.4f} nats "
              f"(t = {b.normalization['t']:g}, n = {b.normalization['n']})")
    print(f"MLflow: {tracking_uri(p.workspace)} (experiment {p.cfg.tracking.experiment!r}, run {p.name!r}); "
          f"browse with `dsm ui --workspace {shlex.quote(str(p.workspace))}`")
    print(f"checkpoints: {p.out}")  # the run folder, or <storage>/<name> in a bucket
    best = export.parent / BEST_FILE
    if best.is_file():
        m = load_model(best).meta
        print(f"best held-out NLL: {m[SELECTED_BY]:.4f} bits/dim at step {m['step']}: {best}")
    print(export)


def main(config: str | None, overrides: list[str], *, workspace: str | None, address: str | None,
         workers: int | None, gpu: bool, quiet: bool = False, register: str | None = None,
         storage: str | None = None, print_config: bool = False, dry_run: bool = False,
         resume: str | None = None) -> int:
    """``dsm train``: returns the exit code (failures become exit codes in dsm.plumbing.errors.exit_code).
    print_config: print the config as it would run (YAML, every field) instead; dry_run: say what
    would happen instead (dsm.train.resume.describe); resume: continue the run of that name."""
    from dsm.runtime.tracking import workspace_dir
    from dsm.train import resume as resuming

    if register is not None:
        from dsm.runtime.mlmodel import check_model_name

        check_model_name(register)
    cfg = _config(config, overrides, workers, gpu, resume)
    if print_config:
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="", flush=True)
        return 0
    stem = Path(config).stem if config else "train"
    storage, ws = storage_root(storage), workspace_dir(workspace, create=False)
    if resume is not None:
        resuming.require_run(Location.of(storage) if storage else Location.of(ws / "runs"), resume)
    if dry_run:
        print("\n".join(resuming.describe(cfg, ws, stem, storage)), flush=True)
        return 0
    p = plan(cfg, workspace, stem, progress=not quiet, storage=storage)
    print(f"dsm train: run {p.name!r}, {p.cfg.steps} steps on {p.cfg.scaling.workers} worker(s), data {p.shape}; "
          f"outputs in {p.run_dir}" + (f", checkpoints in {p.out}" if p.published_elsewhere else ""), flush=True)
    if resume is None and p.out.is_local and resuming.last_checkpoint(p.out)[1] is None:  # a new local run
        command = "dsm train " + shlex.join([config or "", *overrides])
        hint = resuming.continue_hint(p.cfg, p.out.parent, p.name, command)
        if hint:
            print(hint, flush=True)
    with exclusive(p.run_dir, f"run {p.name!r}"):  # one dsm train per run folder (else Busy: exit 2)
        export = train(p, address, register=register)
    print_summary(p, export)
    return 0


def _config(config: str | None, overrides: list[str], workers: int | None, gpu: bool,
            resume: str | None) -> TrainConfig:
    """The config of ``dsm train``'s command line: the file, the overrides, then the options' fields."""
    from dsm.plumbing.config import load_config

    extra = list(overrides)
    if workers is not None:
        extra.append(f"scaling.workers={workers}")
    if gpu:
        extra.append("scaling.gpu=true")
    if resume is not None:
        extra.append(f"name={resume}")
    return load_config(TrainConfig, config, extra)
