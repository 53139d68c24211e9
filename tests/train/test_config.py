"""Bad configs fail before anything starts, with the offending field named."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dsm.plumbing.config import ConfigError, load_config
from dsm.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "configs" / "digits-smoke.yaml")


@pytest.mark.parametrize("overrides, field", [
    (["bogus=1"], "bogus"),
    (["model.wdth=3"], "model.wdth"),
    (["steps=many"], "steps"),
    (["noise.t_min=10", "noise.t_max=1"], "noise"),
    (["scaling.workers=0"], "scaling.workers"),
    (["data.batch_size=63"], "data.batch_size"),
    (["model.form=scalar"], "model"),
    (["data.dataset=nope"], "data.dataset"),
    (["noise.sampler=cubic"], "noise.sampler"),
    (["optim.ema_decay=1.5"], "optim.ema_decay"),
    (["precision=fp16"], "precision"),  # fp16 is not offered: the network output overflows its range
])
def test_invalid_fields_are_named(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(TrainConfig, SMOKE, overrides)


def test_precision_defaults_to_fp32_and_takes_bf16():
    assert load_config(TrainConfig, SMOKE).precision == "fp32"
    cfg = load_config(TrainConfig, SMOKE, ["precision=bf16"])
    assert cfg.precision == "bf16" and cfg.fingerprint() != load_config(TrainConfig, SMOKE).fingerprint()


def test_shipped_configs_validate():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(TrainConfig, path)
        assert cfg.steps >= 1, path


def test_run_name_is_deterministic_and_tracks_the_config():
    a = load_config(TrainConfig, SMOKE)
    assert a.run_name("x") == load_config(TrainConfig, SMOKE).run_name("x")
    assert a.run_name("x") != load_config(TrainConfig, SMOKE, ["seed=1"]).run_name("x")
    assert load_config(TrainConfig, SMOKE, ["name=mine"]).run_name("x") == "mine"
    with pytest.raises(ConfigError, match="name"):
        load_config(TrainConfig, SMOKE, ["name=a/b"])


CASES = [
    (["bogus=1"], "bogus"),
    (["steps=abc"], "steps"),
    (["noise.t_min=1", "noise.t_max=1"], "t_min"),
    (["data.dataset=null", "data.path=/nonexistent/shards"], "data.path"),
    (["data.dataset=null", "data.path=/nonexistent/train.npy"], "data.path: /nonexistent/train.npy does not exist"),
    (["data.dataset=null", "data.path=/", "data.eval_path=/nonexistent/test"],
     "data.eval_path: /nonexistent/test does not exist"),
    (["scaling.workers=0"], "scaling.workers"),
    (["model.unet.scales=4"], "model.unet"),  # 8x8 digits cannot take 4 scales
]


def _no_ray_start(monkeypatch):
    """In-process CLI checks: fail the test if dsm would start or join Ray."""
    import dsm.runtime.cluster

    def no_ray(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(dsm.runtime.cluster, "connect", no_ray)


@pytest.mark.parametrize("overrides, field", CASES)
def test_cli_fails_before_ray_or_mlflow(tmp_path, overrides, field, capsys, monkeypatch):
    """`dsm train` exits 2 naming the field, without starting Ray or creating an MLflow store
    (in this process; that Ray is not even imported is checked in a fresh interpreter below)."""
    import ray

    from dsm.cli import main

    _no_ray_start(monkeypatch)
    ws = tmp_path / "ws"
    ray_was_up = ray.is_initialized()
    assert main(["train", SMOKE, *overrides, "--workspace", str(ws), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert field in err, err
    assert not (ws / "mlflow.db").exists()
    assert ray.is_initialized() == ray_was_up


def test_cli_failures_do_not_import_ray(tmp_path):
    """Each of CASES in one fresh interpreter (the session's Ray must not be seen): exit code 2
    naming the field, and Ray still not imported after it, so a bad config fails fast."""
    code = ("import json, sys; from dsm.cli import main\n"
            "for i, (overrides, field) in enumerate(json.loads(sys.argv[1])):\n"
            "    ws = f'{sys.argv[2]}/ws{i}'\n"
            "    rc = main(['train', sys.argv[3], *overrides, '--workspace', ws, '--quiet'])\n"
            "    assert rc == 2, (overrides, rc)\n"
            "    assert 'ray' not in sys.modules, ('Ray was imported', overrides)\n"
            "    print(json.dumps([i, field]), flush=True)\n")
    r = subprocess.run([sys.executable, "-c", code, json.dumps(CASES), str(tmp_path), SMOKE],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [json.loads(ln) for ln in r.stdout.splitlines()] == [[i, f] for i, (_, f) in enumerate(CASES)]
    for _, field in CASES:
        assert field in r.stderr, (field, r.stderr)
    assert not list(tmp_path.glob("ws*/mlflow.db"))


@pytest.mark.parametrize("tail", [["--quiet", "steps=abc"], ["seed=1", "--quiet", "steps=abc"]])
def test_overrides_are_taken_after_options(tmp_path, tail, capsys, monkeypatch):
    """`dsm train CONFIG --workspace W steps=...`: the override after an option is
    applied (here refused, naming its field), not rejected as an unrecognized argument."""
    from dsm.cli import main

    _no_ray_start(monkeypatch)
    assert main(["train", SMOKE, "--workspace", str(tmp_path / "ws"), *tail]) == 2
    err = capsys.readouterr().err
    assert "steps" in err and "unrecognized" not in err, err
    with pytest.raises(SystemExit) as e:
        main(["train", SMOKE, "--quiet", "--bogus-flag", "steps=1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments: --bogus-flag" in err, err


def test_a_fixed_name_refuses_another_config_before_ray(make_cfg, digits_workspace):
    """`name=fixed`, then the same name with another architecture. The run folder's
    checkpoint says how it was trained; plan() refuses, naming the fields, and starts nothing.
    Fields a resume may change (steps, evaluation, checkpointing) pass."""
    import torch

    from dsm.train.run import plan

    first = make_cfg("name=fixed")
    ckpt = digits_workspace / "runs" / "fixed" / "checkpoint_000000"
    ckpt.mkdir(parents=True)
    torch.save({"config": first.model_dump(mode="json"), "step": 100}, ckpt / "state.pt")
    try:
        assert plan(make_cfg("name=fixed", "steps=900", "eval.samples=128"), digits_workspace,
                    progress=False).name == "fixed"
        with pytest.raises(ConfigError) as e:
            plan(make_cfg("name=fixed", "model.preset=small", "model.unet.base_width=8"), digits_workspace,
                 progress=False)
        msg = str(e.value)
        assert "model.unet.base_width (None -> 8)" in msg and "'fixed'" in msg and "\n" not in msg, msg
        assert "model.preset" in msg
    finally:
        import shutil

        shutil.rmtree(digits_workspace / "runs" / "fixed")


def test_two_commands_on_one_run_folder_or_fresh_data(tmp_path):
    """A second `dsm train` on a run folder in use says which process holds it, before
    Ray starts; two commands preparing the same built-in data on a fresh workspace both succeed
    (the second waits for the first's preparation instead of racing it)."""
    import threading

    from dsm.train.build import resolve_data
    from dsm.train.run import plan

    ws = tmp_path / "ws"
    cfgs = [load_config(TrainConfig, SMOKE, ["name=busy"]) for _ in range(2)]
    resolved, errors = [], []

    def prep(cfg):
        try:
            resolved.append(resolve_data(cfg, ws, progress=False).data.path)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=prep, args=(c,)) for c in cfgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(resolved) == 2 and resolved[0] == resolved[1]

    p = plan(cfgs[0], ws, progress=False)
    code = ("import sys, time; from dsm.plumbing.fileio import exclusive\n"
            "with exclusive(sys.argv[1], 'run'):\n    print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(p.run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        check = ("import sys; from dsm.cli import main; rc = main(sys.argv[1:]); "
                 "assert 'ray' not in sys.modules, 'Ray was imported'; sys.exit(rc)")
        r = subprocess.run([sys.executable, "-c", check, "train", SMOKE, "name=busy", "--workspace", str(ws),
                            "--quiet"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and f"pid {holder.pid}" in r.stderr and "run 'busy'" in r.stderr, r.stderr
    finally:
        holder.kill()
        holder.wait()
