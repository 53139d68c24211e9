"""The model description (:class:`ModelConfig`, the ``model`` section of a training config)
and the factories that assemble energies and score models from it. Core: no Ray, no MLflow,
nothing from the orchestration packages, so a model file (dsm.core.bundle) is rebuilt from here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from dsm.core.energy import EnergyForm, EnergyModel, Scaling, ScoreModel
from dsm.core.nets.mlp import ACTIVATIONS, MLP, TimeScalar
from dsm.core.nets.unet import UNet, unet_config
from dsm.plumbing.config import ConfigError, StrictModel

# Std of [0, 1] pixels, roughly: the data scale of the ``variance`` scaling for images.
IMAGE_SIGMA_DATA = 0.5


def _image_sigma(scaling: str) -> float | None:
    return IMAGE_SIGMA_DATA if scaling == "variance" else None


def mlp_energy(dim: int, *, form: EnergyForm = "inner+c", t_min: float, t_max: float,
               width: int = 256, depth: int = 3, sigma_data: float | None = 1.0,
               homogeneous: bool = False, activation: str = "silu", embedding: str = "log",
               additive_normalization: bool = False) -> EnergyModel:
    """An MLP energy on vectors of ``dim`` dimensions (see :class:`EnergyModel` for forms)."""
    out = 1 if form == "scalar" else dim
    backbone = MLP(dim, out, t_min=t_min, t_max=t_max, width=width, depth=depth, embedding=embedding,
                   homogeneous=homogeneous, activation=activation)
    c_net = TimeScalar(t_min=t_min, t_max=t_max, embedding=embedding) if form == "inner+c" else None
    # the additive (d/2) log t needs a floor; without it no t_floor is used (as before)
    return EnergyModel(backbone, (dim,), form=form, c_net=c_net, sigma_data=sigma_data,
                       t_floor=t_min if additive_normalization else 0.0,
                       additive_normalization=additive_normalization)


def mlp_score_model(dim: int, *, t_min: float, t_max: float, width: int = 256, depth: int = 3,
                    sigma_data: float | None = 1.0, homogeneous: bool = False,
                    activation: str = "silu", embedding: str = "log") -> ScoreModel:
    """The score-network baseline on the same MLP backbone."""
    backbone = MLP(dim, dim, t_min=t_min, t_max=t_max, width=width, depth=depth, embedding=embedding,
                   homogeneous=homogeneous, activation=activation)
    return ScoreModel(backbone, (dim,), sigma_data=sigma_data)


def unet_energy(channels: int, image_size: int, preset: str = "small", *, form: EnergyForm = "inner",
                scaling: str = "none", additive_normalization: bool = False, **overrides) -> EnergyModel:
    """The image energy U = c_out/2 <y, f(c_in y, t)> on a bias-free UNet (the paper's form).

    overrides: :class:`dsm.core.nets.unet.UNetConfig` fields (t_min, activation, base_width, ...).
    additive_normalization: U += (d/2) log max(t, t_min) (:class:`EnergyModel`).
    The default scaling ``none`` is the paper's: the UNet output is the score s_theta itself.
    ``inverse_t`` (f predicts the noise residual y - D) made early TSM losses explode at
    t = 1e-9 (U grows like 1/t); see docs/unet.md.
    """
    cfg = unet_config(preset, channels=channels, image_size=image_size, **overrides)
    c_net = TimeScalar(t_min=cfg.t_min, t_max=cfg.t_max, embedding=cfg.embedding) if form == "inner+c" else None
    if form == "scalar":
        raise ValueError("the UNet is a vector-valued backbone: use form 'inner' or 'inner+c'")
    return EnergyModel(UNet(cfg), (channels, image_size, image_size), form=form, c_net=c_net,
                       scaling=scaling, sigma_data=_image_sigma(scaling), t_floor=cfg.t_min,
                       additive_normalization=additive_normalization)


def unet_score_model(channels: int, image_size: int, preset: str = "small", *, scaling: str = "none",
                     **overrides) -> ScoreModel:
    """The score-network baseline on the same UNet: D = y - t f(y, t)."""
    cfg = unet_config(preset, channels=channels, image_size=image_size, **overrides)
    return ScoreModel(UNet(cfg), (channels, image_size, image_size), scaling=scaling,
                      sigma_data=_image_sigma(scaling), t_floor=cfg.t_min)


def _described(hint) -> str | None:
    """The description of an ``Annotated[..., Field(description=...)]`` hint, with what None means here."""
    text = next((m.description for m in getattr(hint, "__metadata__", ()) if getattr(m, "description", None)), None)
    return f"{text} (none: the preset's)" if text else None


def _unet_options() -> type[StrictModel]:
    """``model.unet``: each field of dsm.core.nets.unet.UNetConfig that a config may override, with
    its type and range from there, optional (None keeps the preset's value). The image shape
    comes from the data and the t range from ``noise``, so those are left out."""
    import dataclasses
    import typing

    from pydantic import create_model

    from dsm.core.nets.unet import UNetConfig

    hints = typing.get_type_hints(UNetConfig, include_extras=True)
    fixed = {"channels", "image_size", "t_min", "t_max"}
    fields = {f.name: (hints[f.name] | None, Field(None, description=_described(hints[f.name])))
              for f in dataclasses.fields(UNetConfig) if f.name not in fixed}
    return create_model("UNetOptions", __base__=StrictModel, __module__=__name__,
                        __doc__="Overrides of the UNet preset's fields (dsm.core.nets.unet.UNetConfig); None keeps the "
                                "preset.", **fields)


UNetOptions = _unet_options()


class MLPOptions(StrictModel):
    """The MLP backbone (vectors; any data flattened)."""

    width: int = Field(256, ge=1, description="hidden units per layer")
    depth: int = Field(3, ge=1, description="hidden layers")
    activation: Literal[tuple(ACTIVATIONS)] = Field("silu", description="nonlinearity of the hidden layers")
    homogeneous: bool = Field(False, description="no biases and no additive time shifts (time gains only): with "
                                                 "relu, f(a y, t) = a f(y, t) for a > 0")
    embedding: Literal["log", "linear"] = Field("log", description="time embedding: Fourier features of log t (log) "
                                                                   "or sin/cos of t (linear), floored at noise.t_min")
    sigma_data: float | None = Field(1.0, gt=0, description="data scale of the MLP's input scaling")


class ModelConfig(StrictModel):
    """Which network: an energy (dual score matching) or the score-network baseline."""

    kind: Literal["energy", "score"] = Field(
        "energy", description="energy: an energy U(y, t) trained by dual score matching, with a normalized log p; "
                              "score: the score-network baseline, trained by plain denoising (no log p)")
    arch: Literal["unet", "mlp"] = Field("unet", description="backbone: unet (square images) or mlp (vectors, or "
                                                             "any data flattened)")
    form: EnergyForm = Field(
        "inner", description="energy only: inner, U = c_out/2 <y, f(c_in y, t)> (the paper's); inner+c, the same "
                             "plus d c(t) with a learned c; scalar, U = c_in c_out/2 |y|^2 + d h(c_in y, t) (mlp "
                             "only)")
    scaling: Scaling = Field(
        "none", description="UNet input/output scaling: none (the output is the score; the paper's), variance "
                            "(c_in = c_out = 1/sqrt(0.25 + t)) or inverse_t (c_out = 1/max(t, t_min): f predicts the "
                            "noise residual). The MLP uses variance when mlp.sigma_data is set, else none")
    preset: Literal["paper", "paper-dsm", "small", "tiny"] = Field(
        "small", description="UNet preset: paper (the paper's exact network), paper-dsm (the same size with "
                             "dsm's normalization, time MLP and embedding), small, tiny (docs/unet.md)")
    additive_normalization: bool = Field(False, description="energy only: U += (d/2) log t, the official option")
    unet: UNetOptions = Field(default_factory=UNetOptions, description="overrides of the UNet preset (arch unet)")
    mlp: MLPOptions = Field(default_factory=MLPOptions, description="the MLP backbone (arch mlp)")

    @model_validator(mode="after")
    def _form(self) -> ModelConfig:
        if self.arch == "unet" and self.form == "scalar":
            raise ValueError("model.form 'scalar' needs model.arch 'mlp' (the UNet is vector-valued)")
        if self.kind == "score" and self.additive_normalization:
            raise ValueError("model.additive_normalization is an energy option; model.kind is 'score'")
        return self


@dataclass(frozen=True)
class DataShape:
    """The event shape of the data: (C, H, W) for images, (d,) for vectors."""

    shape: tuple[int, ...]
    is_image: bool

    @property
    def dim(self) -> int:
        return math.prod(self.shape)


def from_config(m: ModelConfig, shape: DataShape, *, t_min: float, t_max: float) -> nn.Module:
    """The energy (or score baseline) that ``m`` describes, for data of ``shape``, trained on
    noise variances [t_min, t_max] (the time embedding's range). ConfigError names the field."""
    if m.arch == "unet":
        if not shape.is_image or len(shape.shape) != 3 or shape.shape[1] != shape.shape[2]:
            raise ConfigError(f"model.arch: the UNet needs square images (C, H, H); the data is {shape.shape}. "
                              "Use model.arch=mlp for vectors")
        c, h = shape.shape[0], shape.shape[1]
        over = {k: v for k, v in m.unet.model_dump().items() if v is not None}
        over.update(t_min=t_min, t_max=t_max)
        try:
            if m.kind == "energy":
                return unet_energy(c, h, m.preset, form=m.form, scaling=m.scaling,
                                   additive_normalization=m.additive_normalization, **over)
            return unet_score_model(c, h, m.preset, scaling=m.scaling, **over)
        except ValueError as e:
            raise ConfigError(f"model.unet: {e}") from None
    o = m.mlp
    kw = dict(t_min=t_min, t_max=t_max, width=o.width, depth=o.depth, sigma_data=o.sigma_data,
              homogeneous=o.homogeneous, activation=o.activation, embedding=o.embedding)
    if m.kind == "energy":
        return mlp_energy(shape.dim, form=m.form, additive_normalization=m.additive_normalization, **kw)
    return mlp_score_model(shape.dim, **kw)
