import pytest
from pydantic import Field

from dsm.plumbing.config import ConfigError, StrictModel, load_config, parse_overrides


class Inner(StrictModel):
    width: int = Field(64, ge=1)


class Cfg(StrictModel):
    name: str = "x"
    lr: float = 1e-3
    flips: bool = False
    model: Inner = Inner()


def test_overrides_are_yaml_typed_and_dotted():
    assert parse_overrides(["lr=1e-4", "flips=true", "model.width=8", "name=abc"]) == {
        "lr": 1e-4, "flips": True, "model": {"width": 8}, "name": "abc"}


def test_overrides_later_wins_and_conflicts_name_the_keys():
    assert parse_overrides(["lr=1", "name=a=b", "lr=2", "name="]) == {"lr": 2.0, "name": ""}
    assert parse_overrides(["psnrs=[10, 20]", "t=inf"]) == {"psnrs": [10, 20], "t": "inf"}
    for items, says in ((["model=1", "model.width=8"], "'model.width' conflicts"),
                        (["model.width=8", "model=1"], "'model' conflicts"),
                        (["lr"], "not of the form key=value"), (["=3"], "empty key"),
                        (["lr=[1"], "not valid YAML")):
        with pytest.raises(ConfigError, match=says):
            parse_overrides(items)


def test_load_merges_file_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("lr: 0.01\nmodel:\n  width: 32\n")
    cfg = load_config(Cfg, p, ["model.width=16"])
    assert cfg.lr == 0.01 and cfg.model.width == 16 and cfg.name == "x"


def test_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.widht: Extra inputs are not permitted"):
        load_config(Cfg, None, ["model.widht=3"])
    with pytest.raises(ConfigError, match=r"model\.width: Input should be greater than or equal to 1"):
        load_config(Cfg, None, ["model.width=0"])
    with pytest.raises(ConfigError, match=r"lr: Input should be a valid number"):
        load_config(Cfg, None, ["lr=fast"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(Cfg, None, ["lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Cfg, bad)


def test_additive_normalization_is_an_energy_option():
    from dsm.plumbing.config import ConfigError, load_config
    from dsm.train.config import TrainConfig

    with pytest.raises(ConfigError, match="additive_normalization is an energy option"):
        load_config(TrainConfig, None, ["data.path=x", "model.kind=score", "model.additive_normalization=true"])


def test_a_built_in_config_is_found_by_name_and_an_unknown_one_lists_them(tmp_path, monkeypatch):
    from pathlib import Path

    from dsm.plumbing.config import ConfigError, built_in_configs, config_file

    repo = Path(__file__).resolve().parents[2]
    shipped = built_in_configs()
    assert sorted(shipped) == sorted(p.stem for p in (repo / "configs").glob("*.yaml"))  # what the wheel ships
    monkeypatch.chdir(tmp_path)  # outside the checkout, as an installed dsm runs
    assert config_file("digits-smoke").read_text() == (repo / "configs" / "digits-smoke.yaml").read_text()
    assert config_file("digits-smoke.yaml") == shipped["digits-smoke"]
    (tmp_path / "digits-smoke.yaml").write_text("steps: 5\n")
    assert config_file("digits-smoke.yaml") == Path("digits-smoke.yaml")  # a file here wins over a built-in
    with pytest.raises(ConfigError, match=r"'nope' does not exist \(built-in configs, by name: digits-smoke, "):
        config_file("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        config_file("sub/digits-smoke")  # a path is a path
