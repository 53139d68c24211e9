"""Factories that assemble energies and score models from a backbone description."""

from __future__ import annotations

from dsm.energy import EnergyForm, EnergyModel, ScoreModel
from dsm.nets.mlp import MLP, TimeScalar
from dsm.nets.unet import UNet, unet_config

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

    overrides: :class:`dsm.nets.unet.UNetConfig` fields (t_min, activation, base_width, ...).
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
