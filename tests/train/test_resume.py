"""Resuming a run (dsm.train.resume): what a resume may change, ``dsm train --dry-run`` and
``--resume``, on fabricated checkpoints (their state.pt holds the config and step that real ones
hold); in-process, without Ray."""

from pathlib import Path

import pytest
import torch

from dsm.cli import main
from dsm.plumbing.config import ConfigError, load_config
from dsm.train.build import planned_data
from dsm.train.config import TrainConfig
from dsm.train.resume import check_resumable

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "digits-smoke.yaml")



@pytest.fixture
def given_data(digits_workspace):
    """Overrides that train on the session's prepared digits shards (data.path), so that a test's
    own workspace needs no preparing."""
    prepared = next((digits_workspace / "data").glob("digits-*"))
    return ["data.dataset=null", f"data.path={prepared / 'train'}"]


def _checkpoint(run_dir: Path, cfg: TrainConfig, step: int) -> None:
    folder = run_dir / f"checkpoint_{step:06d}"
    folder.mkdir(parents=True)
    torch.save({"config": cfg.model_dump(mode="json"), "step": step}, folder / "state.pt")


def _planned(ws: Path, *overrides: str) -> tuple[str, TrainConfig]:
    cfg = planned_data(load_config(TrainConfig, SMOKE, ["eval.consistency=false", *overrides]), ws)[0]
    return cfg.run_name("digits-smoke"), cfg


def _dry_run(ws: Path, capsys, *args: str) -> tuple[int, str]:
    rc = main(["train", SMOKE, "eval.consistency=false", *args, "--workspace", str(ws), "--dry-run"])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def test_a_resume_may_change_how_it_waits_for_the_cluster_not_its_workers(make_cfg, tmp_path):
    """check_resumable reads the config in the run's last checkpoint: a resumed run may wait longer
    for its GPUs or survive more failures, but not change its world size (the data order)."""
    cfg = make_cfg("name=resumable")
    _checkpoint(tmp_path, cfg, 40)
    waits = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"resource_timeout_s": 60.0,
                                                                             "max_failures": 9})})
    check_resumable(waits, tmp_path)
    wider = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"workers": 1})})
    with pytest.raises(ConfigError, match=r"another config: scaling\.workers \(2 -> 1\)"):
        check_resumable(wider, tmp_path)


def test_the_dry_run_of_a_new_run_on_a_fresh_workspace_prepares_starts_and_writes_nothing(tmp_path, capsys, no_ray):
    ws = tmp_path / "ws"
    rc, out = _dry_run(ws, capsys, "steps=120")
    assert rc == 0, out
    name, cfg = _planned(ws, "steps=120")
    assert f"run: '{name}', new, 120 steps" in out
    assert "data: 'digits' is not prepared yet: it would be prepared into" in out
    assert f"workers: 2 x (1 CPU), batch {cfg.data.batch_size} ({cfg.per_worker_batch} per worker)" in out
    assert f"outputs: {ws / 'runs' / name}; MLflow experiment 'dsm-train'" in out
    assert not ws.exists() and list(tmp_path.iterdir()) == []


def test_more_steps_names_a_new_run_and_both_the_dry_run_and_the_start_say_how_to_continue(
        tmp_path, capsys, no_ray, given_data, monkeypatch):
    ws = tmp_path / "ws"
    old, old_cfg = _planned(ws, *given_data, "steps=120")
    _checkpoint(ws / "runs" / old, old_cfg, 120)
    new, _ = _planned(ws, *given_data, "steps=240")
    assert new != old  # the name hashes the config, steps included

    rc, out = _dry_run(ws, capsys, *given_data, "steps=240")
    assert rc == 0, out
    assert f"run: '{new}', new, 240 steps" in out and "examples of shape (1, 8, 8)" in out
    assert f"note: run '{old}' (at step 120) has this config up to steps" in out
    assert f"--resume {old}" in out

    rc, out = _dry_run(ws, capsys, *given_data, "steps=240", "--resume", old)
    assert rc == 0, out
    assert f"run: '{old}', resumed from step 120 of 240" in out and "note:" not in out

    import dsm.train.run as run_module

    def stop_before_ray(p, *a, **k):  # the start itself: plan, the hint, then Ray (stopped here)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "train", stop_before_ray)
    rc = main(["train", SMOKE, "eval.consistency=false", *given_data, "steps=240", "--workspace", str(ws), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 130 and f"note: run '{old}' (at step 120)" in out and f"--resume {old}" in out


def test_resume_names_a_run_that_must_exist(tmp_path, capsys, no_ray, given_data):
    ws = tmp_path / "ws"
    old, old_cfg = _planned(ws, *given_data, "steps=120")
    _checkpoint(ws / "runs" / old, old_cfg, 120)
    rc = main(["train", SMOKE, *given_data, "--workspace", str(ws), "--resume", "nope"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--resume nope: no run 'nope' with a checkpoint in {ws / 'runs'} (runs there: {old})" in err
    rc, out = _dry_run(ws, capsys, *given_data, "seed=3", "--resume", old)
    assert rc == 2 and "was trained with another config: seed (0 -> 3)" in out
