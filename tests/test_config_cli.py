"""``dsm config schema``: the JSON Schema of a training config and of a sweep spec, and the copies
of it that the docs ship (docs/schema/), which must be regenerated when a field changes."""

import json
from pathlib import Path

import pytest

from dsm import cli
from dsm.config_cli import SCHEMA_FILES
from dsm.train.config import TrainConfig
from dsm.tune.spec import SweepSpec

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"train": TrainConfig, "tune": SweepSpec}


def _run(capsys, monkeypatch, *argv: str) -> str:
    for k in ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "MLFLOW_LOGGING_LEVEL"):  # main() sets these defaults
        monkeypatch.setenv(k, "false" if k.endswith("BAR") else "WARNING")
    assert cli.main(["config", "schema", *argv]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    return out.out


@pytest.mark.parametrize("kind", ["train", "tune"])
def test_schema_is_the_models_and_the_shipped_file_is_current(capsys, monkeypatch, kind):
    text = _run(capsys, monkeypatch, *([] if kind == "train" else ["--kind", kind]))
    assert json.loads(text) == MODELS[kind].model_json_schema()
    assert text.endswith("}\n") and text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    shipped = ROOT / SCHEMA_FILES[kind]
    regenerate = f".venv/bin/dsm config schema --kind {kind} > {SCHEMA_FILES[kind]}"
    assert shipped.is_file(), f"{SCHEMA_FILES[kind]} is missing; write it with: {regenerate}"
    assert shipped.read_text() == text, (f"{SCHEMA_FILES[kind]} is out of date with {MODELS[kind].__name__}; "
                                         f"regenerate it with: {regenerate}")


def test_default_kind_is_train(capsys, monkeypatch):
    assert _run(capsys, monkeypatch) == _run(capsys, monkeypatch, "--kind", "train")


def test_schema_carries_the_descriptions(capsys, monkeypatch):
    train = json.loads(_run(capsys, monkeypatch))
    assert train["properties"]["steps"]["description"].startswith("training steps")
    assert train["properties"]["steps"]["minimum"] == 1 and train["properties"]["steps"]["default"] == 2000
    assert train["additionalProperties"] is False  # a misspelled key is flagged by the editor too
    unet = train["$defs"]["UNetOptions"]["properties"]
    assert all(p.get("description") for p in unet.values()), "model.unet fields without a description"
    assert "noise variance" in train["$defs"]["NoiseConfig"]["properties"]["t_min"]["description"]
    tune = json.loads(_run(capsys, monkeypatch, "--kind", "tune"))
    assert tune["properties"]["metric"]["description"]
    assert tune["$defs"]["Param"]["properties"]["loguniform"]["description"]


def test_unknown_kind_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["config", "schema", "--kind", "nope"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
