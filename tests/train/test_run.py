"""Real Ray Train runs on the session's local Ray, tracked in a real SQLite MLflow store."""

import re
import threading
import time

import numpy as np
import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from dsm.core.bundle import load_model
from dsm.runtime.tracking import tracking_uri
from dsm.train.run import NonFiniteTraining, plan, train
from dsm.train.runlog import MARKER


def _run(ws, name):
    client = MlflowClient(tracking_uri(ws))
    exp = client.get_experiment_by_name("dsm-train")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`dsm.run_name` = '{name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def _steps(client, run_id, key):
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_two_worker_digits_run(two_worker_run, digits_workspace):
    p, export = two_worker_run  # tests/train/conftest.py: 20 steps, a checkpoint and evaluation every 10
    assert export == p.export_path and export.is_file()

    client, run = _run(digits_workspace, "two-workers")
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["scaling.workers"] == "2" and params["model.unet.embedding"] == "log"
    assert params["noise.t_min"] == "0.0001"
    for tag in ("dsm.git_commit", "dsm.ray_version", "dsm.data_manifest_sha256", "dsm.device"):
        assert run.data.tags.get(tag), tag
    assert _steps(client, run.info.run_id, "train/loss") == [5, 10, 15, 20]
    assert _steps(client, run.info.run_id, "eval/nll_bpd") == [10, 20]
    nll = run.data.metrics["eval/nll_bpd"]
    assert np.isfinite(nll) and 0 < nll < 40
    for key in ("eval/log_z", "eval/log_z_stderr", "eval/psnr_out_in20dB", "eval/loss_band0", "train/loss_band3",
                "eval/loss_train_t_dist", "consistency/log_z_spread_nats", "consistency/ode_gap_abs_nats_per_dim"):
        assert key in run.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model", "figures"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/model-best.pt",
                                                                                 "model/model.pt"]
    # model selection: model-best.pt is the evaluation with the lowest held-out NLL, normalized
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval/nll_bpd")}
    best_step = min(history, key=history.get)
    best = load_model(export.parent / "model-best.pt")
    assert best.meta["step"] == best_step and best.meta["selected_by"] == "eval/nll_bpd"
    assert best.meta["eval/nll_bpd"] == pytest.approx(history[best_step], rel=1e-6)
    assert best.normalization["value"] == pytest.approx(float(best.model.log_z))
    assert run.data.tags["dsm.best_step"] == str(best_step)

    b = load_model(export)
    assert b.meta["mlflow_run_id"] == run.info.run_id and b.meta["step"] == 20 and b.meta["selected_by"] == "last"
    assert b.normalization["value"] == pytest.approx(float(b.model.log_z))
    x = torch.rand(4, 1, 8, 8)
    assert torch.isfinite(b.model.log_prob(x)).all()
    # optim.ema_decay: the checkpoint holds the weight EMA beside the raw weights, and the
    # normalized, exported model is the EMA
    last = sorted(d for d in p.run_dir.glob("checkpoint_*") if d.is_dir())[-1]
    blob = torch.load(last / "state.pt", weights_only=False)
    assert int(blob["ema"]["n_averaged"]) == 20
    for name, value in b.model.state_dict().items():
        if name != "log_z":
            torch.testing.assert_close(value, blob["ema"][f"module.{name}"], rtol=0, atol=0, msg=name)
    assert any(not torch.equal(blob["model"][n], blob["ema"][f"module.{n}"]) for n in blob["model"])


@pytest.mark.slow  # a second Ray Train group start on the finished run that the test above reads
def test_a_finished_run_run_again_resumes_at_its_end(two_worker_run, digits_workspace):
    """Re-running the finished run resumes at its end: no new steps, same MLflow run."""
    p, export = two_worker_run
    _, run = _run(digits_workspace, "two-workers")
    assert train(plan(p.cfg, digits_workspace, progress=False), log_to_driver=False) == export
    client, run2 = _run(digits_workspace, "two-workers")
    assert run2.info.run_id == run.info.run_id and run2.info.status == "FINISHED"
    assert _steps(client, run.info.run_id, "train/loss") == [5, 10, 15, 20]
    assert load_model(export).meta["step"] == 20


def _train_workers():
    """This session's Ray Train workers (children of its raylet: other Rays may run on the machine)."""
    import ray._private.worker

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    return [p for p in psutil.process_iter(["cmdline", "ppid"])
            if p.info["ppid"] == raylet and any("RayTrainWorker" in part for part in (p.info["cmdline"] or []))]


@pytest.mark.slow  # over a minute: kept out of the quick loop
def test_killed_worker_restarts_from_checkpoint(ray_cluster, make_cfg, digits_workspace):
    # With importance sampling of t (state all-reduced across ranks and kept in the checkpoint)
    # and the heat regularizer (Hutchinson probes under DDP), so the restart covers them too.
    cfg = make_cfg("steps=120", "checkpoint.every=40", "log_every=20", "eval.enabled=false",
                   "scaling.max_failures=2", "name=fault", "noise.sampler=importance", "noise.importance.bins=8",
                   "noise.importance.warmup=2", "loss.heat_weight=0.05")
    p = plan(cfg, digits_workspace, progress=False)
    out: dict = {}
    th = threading.Thread(target=lambda: out.update(export=train(p, log_to_driver=False)), daemon=True)
    th.start()
    deadline = time.time() + 180
    while not list(p.run_dir.glob("checkpoint_*")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(p.run_dir.glob("checkpoint_*")), "no checkpoint within 3 minutes"
    victims = _train_workers()
    assert len(victims) == 2, [v.info["cmdline"] for v in victims]
    victims[-1].kill()
    th.join(timeout=300)
    assert not th.is_alive() and out.get("export") == p.export_path

    client, run = _run(digits_workspace, "fault")
    steps = _steps(client, run.info.run_id, "train/loss")
    assert steps == list(range(20, 121, 20)), steps  # complete, and no step twice
    assert _steps(client, run.info.run_id, "train/heat_residual_sq") == steps
    assert max(_steps(client, run.info.run_id, MARKER)) == 120
    assert load_model(p.export_path).meta["step"] == 120


@pytest.mark.slow
def test_a_killed_worker_is_one_line_on_the_console(digits_workspace, tmp_path):
    """`dsm train` on its own local Ray (console logs forwarded, as a user
    sees them), one worker SIGKILLed after the first checkpoint. The console says so in one
    line instead of the surviving rank's traceback and the controller's teardown (about 60
    lines); the run resumes and the export path is still the last line."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "dsm.cli", "train", "configs/digits-smoke.yaml", "steps=100", "checkpoint.every=50",
           "eval.enabled=false", "name=killed-worker", "--workspace", str(digits_workspace), "--quiet"]
    out = tmp_path / "console.txt"
    with out.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, text=True)
    run_dir = digits_workspace / "runs" / "killed-worker"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(run_dir.glob("checkpoint_*")):
        time.sleep(0.1)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "RayTrainWorker" in " ".join(p.cmdline())]
    assert len(workers) == 2, [p.cmdline() for p in workers]
    workers[-1].kill()
    assert proc.wait(timeout=300) == 0, out.read_text()[-3000:]
    lines = [ln for ln in out.read_text().splitlines() if ln.strip()]
    text = "\n".join(lines)
    assert ("Traceback" not in text and "Error in training function" not in text
            and "Graceful shutdown" not in text), text
    assert sum("dsm train: worker failure 1 of 3 allowed" in ln for ln in lines) == 1, text
    assert lines[-1] == str(run_dir / "model.pt"), lines[-3:]


@pytest.mark.slow  # a second Ray Train group start (about 15 s): the quick loop keeps the two-worker run
def test_non_finite_data_stops_with_a_clear_error(ray_cluster, tmp_path):
    from dsm.plumbing.config import load_config
    from dsm.train.build import resolve_data
    from dsm.train.config import TrainConfig

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    x[:, 0] = np.nan
    np.save(tmp_path / "bad.npy", x)
    np.save(tmp_path / "ok.npy", rng.normal(size=(64, 4)).astype(np.float32))
    cfg = load_config(TrainConfig, "configs/vectors.yaml",
                      [f"data.path={tmp_path / 'bad.npy'}", f"data.eval_path={tmp_path / 'ok.npy'}", "steps=50",
                       "optim.max_bad_steps=3", "name=nan", "data.batch_size=32"])
    ws = tmp_path / "ws"
    p = plan(resolve_data(cfg, ws), ws, progress=False)
    with pytest.raises(NonFiniteTraining, match="3 non-finite steps in a row"):
        train(p, log_to_driver=False)
    client, run = _run(ws, "nan")
    assert run.info.status == "FAILED" and run.data.tags["dsm.status"] == "non_finite"
    assert run.data.metrics["train/nonfinite_skipped"] == 3
    assert not p.export_path.exists()


@pytest.mark.slow
def test_a_corrupt_shard_fails_in_one_line_and_closes_the_run(ray_cluster, make_cfg, digits_workspace, tmp_path,
                                                           capsys):
    """A truncated training shard is refused before Ray starts (its size disagrees with
    the manifest). One corrupted at its full size fails in the worker, once: not retried (it
    would fail the same way), though retries are allowed; the worker's ShardError reaches the
    user as the last line, naming the shard (not Ray's pages), exit 2; the full traceback is in
    the run's error.log; the MLflow run is FAILED with the cause as its dsm.failure tag."""
    import shutil

    from dsm.cli import main
    from dsm.train.outputs import ERROR_LOG

    cfg = make_cfg()
    data = tmp_path / "digits"
    shutil.copytree(cfg.data.path, data / "train")
    shutil.copytree(cfg.data.eval_path, data / "test")
    bad = sorted((data / "train").glob("*.tar"))[0]
    whole = bad.read_bytes()
    bad.write_bytes(whole[:5000])
    ws = tmp_path / "ws"
    # Truncated: its size disagrees with the manifest, so it is refused before Ray starts
    args = ["train", "configs/digits-smoke.yaml", "data.dataset=null", f"data.path={data / 'train'}", "name=corrupt",
            "steps=40", "eval.consistency=false", "scaling.max_failures=2", "--workspace", str(ws), "--quiet"]
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"dsm train: data: {bad}: 5000 bytes, but manifest.json says"), err[-2:]
    # Corrupt at its full size: only the worker that reads it can tell
    bad.write_bytes(whole[:5000] + bytes(len(whole) - 5000))
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith(f"dsm train: {bad}: "), err[-3:]
    log = ws / "runs" / "corrupt" / ERROR_LOG
    assert f"full traceback in {log}" in err[-2] and "ShardError" in log.read_text()
    assert "not retried" in log.read_text()  # Ray Train's retries would end in a WorkerGroupError
    client, run = _run(ws, "corrupt")
    assert run.info.status == "FAILED" and run.data.tags["dsm.failure"].startswith(str(bad))


def _interrupt_after_a_checkpoint(proc, run_dir) -> str:
    """Ctrl-C ``proc`` once Ray Train has registered a checkpoint in its snapshot (the folder
    appears a moment earlier), so that a re-run must resume rather than restart; its output."""
    import signal

    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and \
            "checkpoint_" not in (snapshot.read_text() if snapshot.is_file() else ""):
        time.sleep(0.05)
    assert proc.poll() is None and snapshot.is_file(), "no checkpoint registered within 3 minutes"
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=120)[0]


@pytest.mark.slow
def test_interrupted_driver_resumes_on_the_same_trajectory(ray_cluster, make_cfg, digits_workspace):
    """Ctrl-C the `dsm train` process after a checkpoint, re-run it: it resumes, and its loss
    curve matches an uninterrupted run with the same seed.

    The interrupted run is asked for far more steps than it can reach, and re-run with the steps
    of the reference (a resume may change steps; the learning rate is constant, so the trajectory
    does not depend on them), so the Ctrl-C always lands on a running job. The child gets
    SIGINT's default action back: a pytest started in the background (``pytest &``) ignores
    SIGINT, its children inherit that, and the Ctrl-C would do nothing."""
    import os
    import signal
    import subprocess
    import sys

    common = ["checkpoint.every=20", "log_every=10", "eval.enabled=false", "optim.schedule=constant"]
    ref = plan(make_cfg(*common, "steps=120", "name=reference"), digits_workspace, progress=False)
    train(ref, log_to_driver=False)

    def command(steps: int) -> list[str]:
        return [sys.executable, "-m", "dsm.cli", "train", "configs/digits-smoke.yaml", *common, f"steps={steps}",
                "name=interrupted", "--address", ray_cluster, "--workspace", str(digits_workspace), "--quiet"]

    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    run_dir = digits_workspace / "runs" / "interrupted"
    proc = subprocess.Popen(command(100_000), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = _interrupt_after_a_checkpoint(proc, run_dir)
    finally:
        if proc.poll() is None:  # never leave a 100000-step run behind, whatever failed
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, first[-3000:]
    assert "re-run the same command to resume" in first
    assert not (run_dir / "model.pt").exists()
    _, killed = _run(digits_workspace, "interrupted")  # closed, with the reason, while nobody trains it
    assert killed.info.status == "KILLED" and killed.data.tags["dsm.status"] == "killed"
    cmd = command(120)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    resumed = re.search(r"resumed interrupted at step (\d+)/120", second.stdout + second.stderr)
    assert resumed and 0 < int(resumed.group(1)) < 120, second.stdout[-2000:]  # from a checkpoint, not the end
    assert second.stdout.strip().splitlines()[-1] == str(run_dir / "model.pt")

    client, run_ref = _run(digits_workspace, "reference")
    _, run_int = _run(digits_workspace, "interrupted")
    assert run_int.info.status == "FINISHED"
    h_ref = client.get_metric_history(run_ref.info.run_id, "train/loss")
    h_int = client.get_metric_history(run_int.info.run_id, "train/loss")
    assert [m.step for m in h_int] == [m.step for m in h_ref] == list(range(10, 121, 10))
    np.testing.assert_allclose([m.value for m in h_int], [m.value for m in h_ref], rtol=1e-5)
