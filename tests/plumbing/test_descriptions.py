"""Every field of the training config and of the sweep spec explains itself: a non-empty pydantic
``description``, which ``dsm config schema`` carries into the JSON Schema that editors complete from."""

import typing
from collections.abc import Iterator

from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

from dsm.train.config import TrainConfig
from dsm.tune.spec import SweepSpec


def _models_in(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds: itself, or inside Optional / unions / lists / dicts /
    Annotated, at any depth."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def fields(model: type[BaseModel], prefix: str = "", _above: tuple = ()) -> Iterator[tuple[str, FieldInfo]]:
    """(dotted path, field) for every field of ``model`` and of the models nested in it; ``x.*``
    stands for the values of a dict or the items of a list."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path, field
        many = typing.get_origin(field.annotation) in (list, dict, tuple, set)
        for sub in _models_in(field.annotation):
            if sub not in (*_above, model):  # a model nested in itself is walked once
                yield from fields(sub, f"{path}.*." if many else f"{path}.", (*_above, model))


def undescribed(model: type[BaseModel]) -> list[str]:
    """Dotted paths of the fields, nested ones included, that have no (or a blank) description."""
    return [path for path, field in fields(model) if not (field.description or "").strip()]


def test_every_training_config_field_has_a_description():
    missing = undescribed(TrainConfig)
    assert not missing, f"TrainConfig fields without a description: {', '.join(missing)}"


def test_every_sweep_spec_field_has_a_description():
    missing = undescribed(SweepSpec)
    assert not missing, f"SweepSpec fields without a description: {', '.join(missing)}"


def test_the_walk_reaches_every_nested_model():
    train = {path for path, _ in fields(TrainConfig)}
    assert {"model.unet.base_width", "model.unet.norm_eps", "model.mlp.width", "model.form", "data.prepare.splits",
            "noise.importance.bins", "eval.psnrs", "tracking.experiment"} <= train
    assert len(train) > 100
    tune = {path for path, _ in fields(SweepSpec)}
    assert {"space.*.grid", "space.*.randint", "scheduler.grace_period", "resources.trial_cpu"} <= tune


class _Leaf(BaseModel):
    described: int = Field(1, description="has one")
    bare: int = 2
    blank: str = Field("", description="  ")


class _Loop(BaseModel):
    again: "_Loop | None" = Field(None, description="itself")
    bare: int = 0


class _Root(BaseModel):
    ok: int = Field(0, description="fine")
    leaf: _Leaf | None = Field(None, description="an optional nested model")
    leaves: list[_Leaf] = Field(default_factory=list)
    by_name: dict[str, _Leaf] = Field(default_factory=dict, description="a dict of models")
    loop: _Loop = Field(default_factory=_Loop, description="a recursive model")


def test_the_check_can_fail():
    assert undescribed(_Root) == ["leaf.bare", "leaf.blank", "leaves", "leaves.*.bare", "leaves.*.blank",
                                  "by_name.*.bare", "by_name.*.blank", "loop.bare"]
