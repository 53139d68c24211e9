"""Small models that several test modules share."""

from __future__ import annotations

import torch

from dsm.core.energy import EnergyModel
from dsm.plumbing.config import load_config
from dsm.train import build
from dsm.train.config import TrainConfig

SMOKE = "configs/digits-smoke.yaml"


def perturbed_smoke_unet() -> tuple[EnergyModel, TrainConfig]:
    """The digits smoke config's tiny UNet energy with its weights moved off their initial values
    (the zero-initialised output layers make U = 0 otherwise), and that config. Seeded: the same
    weights on every call."""
    cfg = load_config(TrainConfig, SMOKE)
    torch.manual_seed(0)
    model = build.build_model(cfg, build.DataShape((1, 8, 8), True))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, cfg
