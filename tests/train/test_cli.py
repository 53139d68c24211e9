"""``dsm train``'s command line, in-process: what it shows without starting anything."""

import os

import yaml

from dsm.cli import main
from dsm.plumbing.config import load_config
from dsm.train.config import TrainConfig

SMOKE = "configs/digits-smoke.yaml"



def test_print_config_shows_every_field_resolved_and_starts_and_writes_nothing(tmp_path, capsys, no_ray,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    rc = main(["train", os.path.join(repo, SMOKE), "steps=7", "optim.lr=2e-3", "--workers", "2",
               "--workspace", str(tmp_path / "ws"), "--print-config"])
    assert rc == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    want = load_config(TrainConfig, os.path.join(repo, SMOKE), ["steps=7", "optim.lr=2e-3", "scaling.workers=2"])
    assert TrainConfig.model_validate(shown) == want
    assert shown == want.model_dump(mode="json")  # every field, the defaults too
    assert "t_min" in shown["noise"] and "ema_decay" in shown["optim"]
    assert list(tmp_path.iterdir()) == []  # no workspace, no data, no run folder
