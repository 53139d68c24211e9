"""Factories that assemble energies and score models from a backbone description."""

from __future__ import annotations

from dsm.energy import EnergyForm, EnergyModel, ScoreModel
from dsm.nets.mlp import MLP, TimeScalar


def mlp_energy(dim: int, *, form: EnergyForm = "inner+c", t_min: float, t_max: float,
               width: int = 256, depth: int = 3, sigma_data: float | None = 1.0,
               homogeneous: bool = False, activation: str = "silu", embedding: str = "log") -> EnergyModel:
    """An MLP energy on vectors of ``dim`` dimensions (see :class:`EnergyModel` for forms)."""
    out = 1 if form == "scalar" else dim
    backbone = MLP(dim, out, t_min=t_min, t_max=t_max, width=width, depth=depth, embedding=embedding,
                   homogeneous=homogeneous, activation=activation)
    c_net = TimeScalar(t_min=t_min, t_max=t_max, embedding=embedding) if form == "inner+c" else None
    return EnergyModel(backbone, (dim,), form=form, c_net=c_net, sigma_data=sigma_data)


def mlp_score_model(dim: int, *, t_min: float, t_max: float, width: int = 256, depth: int = 3,
                    sigma_data: float | None = 1.0, homogeneous: bool = False,
                    activation: str = "silu", embedding: str = "log") -> ScoreModel:
    """The score-network baseline on the same MLP backbone."""
    backbone = MLP(dim, dim, t_min=t_min, t_max=t_max, width=width, depth=depth, embedding=embedding,
                   homogeneous=homogeneous, activation=activation)
    return ScoreModel(backbone, (dim,), sigma_data=sigma_data)
