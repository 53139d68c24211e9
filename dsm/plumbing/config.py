"""YAML configs validated into typed objects, with ``key=value`` overrides.

Every config is a pydantic model with ``extra="forbid"``, so a misspelled field is an error
that names it, raised before any cluster resources are claimed. Overrides use dotted keys
(``model.width=128``) and YAML syntax for values (``t_max=1e3``, ``flips=true``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

C = TypeVar("C", bound=BaseModel)

# The shipped training configs, package data of an installed dsm (in a checkout, a link to configs/)
BUILT_IN_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class StrictModel(BaseModel):
    """Base for every dsm config: unknown fields are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(ValueError):
    """A config failed validation; the message names each offending field."""


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}``: values parsed as YAML, keys nested
    by :func:`nest`. (OmegaConf's ``from_dotlist`` was tried instead: it drops ``a=1`` silently when
    ``a.b=2`` follows, reads ``key=`` as null, and its ``${...}`` interpolation would change
    what a path may contain. PyYAML is what the config files are read with.)"""
    dotted: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        dotted.pop(key, None)  # a later override of the same key wins, and comes last
        dotted[key] = _yaml_value(item, raw)
    return nest(dotted)


def _yaml_value(item: str, raw: str) -> Any:
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
    if isinstance(value, str) and value.strip().lower() not in ("nan", "inf", "-inf", "infinity"):
        try:  # PyYAML (YAML 1.1) reads 1e-4 as a string; people mean a number
            return float(value)
        except ValueError:
            pass
    return value


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "c": 2}`` -> ``{"a": {"b": 1}, "c": 2}`` (values kept as they are)."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key!r} conflicts with another key setting {p!r}")
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError(f"{key!r} conflicts with another key setting {key}.*")
        node[parts[-1]] = value
    return out


def flatten_keys(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The inverse of :func:`nest`: nested mappings to dotted keys (non-dict values kept)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def built_in_configs() -> dict[str, Path]:
    """The configs that come with dsm, by name (``digits-smoke`` for ``digits-smoke.yaml``)."""
    return {f.stem: f for f in sorted(BUILT_IN_CONFIGS.glob("*.yaml"))}


def config_file(ref: str | Path) -> Path:
    """A config file: the path itself, else a built-in config of that name (``dsm train
    digits-smoke``). ConfigError listing the built-in names when it is neither."""
    p = Path(ref)
    if p.is_file():
        return p
    shipped = built_in_configs()
    if p.name == str(ref) and p.stem in shipped and p.suffix in ("", ".yaml"):
        return shipped[p.stem]
    raise ConfigError(f"config file {str(p)!r} does not exist (built-in configs, by name: {', '.join(shipped)})")


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] = (),
                values: dict[str, Any] | None = None) -> C:
    """Read YAML at ``path`` (or start from defaults), apply ``key=value`` overrides, then
    dotted-key ``values`` (already typed), and validate into ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        p = config_file(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of fields, got {type(data).__name__}")
    data = _merge(data, parse_overrides(list(overrides)))
    if values:
        data = _merge(data, nest(values))
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        lines = [f"  {'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors()]
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid {cls.__name__}{where}:\n" + "\n".join(lines)) from None
