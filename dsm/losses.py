"""Dual score matching and the plain denoising loss, per example.

With ``y = x + sqrt(t) z`` and d dimensions (design.md section 2):

- ``l_DSM = ||grad_y U - (y - x)/t||^2``
- ``l_TSM = (dU/dt - d/(2t) + ||y - x||^2/(2 t^2))^2``
- loss = ``(t/d)^a l_DSM + lambda (t/d)^b l_TSM``, with a = 1, b = 2, lambda = 1 in the paper.

Both terms are computed in the residual form that never forms 1/t^2 of a large number:
``r = t grad_y U - sqrt(t) z = (x - D)`` gives ``l_DSM = ||r||^2 / t^2`` and
``q = t dU/dt - d/2 + ||z||^2/2`` gives ``l_TSM = q^2 / t^2``. For a = 1, b = 2 the weighted
terms are ``||D - x||^2/(d t)`` and ``(q/d)^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dsm.energy import Energy, ScoreModel, compute_scores, unwrap
from dsm.noise import bcast


@dataclass
class LossTerms:
    """Per-example loss terms, each (B,): ``total = dsm + tsm_weight * tsm`` (weighted)."""

    total: torch.Tensor
    dsm: torch.Tensor
    tsm: torch.Tensor | None = None  # None for the score-network baseline


@dataclass(frozen=True)
class DualScoreMatching:
    """The dual score matching loss. ``tsm_weight = 0`` is single score matching.

    dsm_exponent a and tsm_exponent b set the weights (t/d)^a and (t/d)^b.
    """

    tsm_weight: float = 1.0
    dsm_exponent: float = 1.0
    tsm_exponent: float = 2.0

    def __post_init__(self):
        if not self.tsm_weight >= 0:
            raise ValueError(f"tsm_weight (lambda) must be >= 0, got {self.tsm_weight}")

    def __call__(self, model: Energy, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> LossTerms:
        """x, z: (B, *event_shape); t: (B,) variances > 0. Returns per-example terms.

        ``model`` is an :class:`Energy`, or one wrapped in DistributedDataParallel."""
        d = unwrap(model).dim
        y = x + bcast(t.sqrt(), x) * z
        s = compute_scores(model, y, t, create_graph=torch.is_grad_enabled())
        r = (bcast(t, y) * s.grad_y - bcast(t.sqrt(), y) * z).flatten(1).square().sum(1)  # t^2 l_DSM
        dsm = r * t ** (self.dsm_exponent - 2) / d**self.dsm_exponent
        tsm = torch.zeros_like(dsm)
        if self.tsm_weight > 0:
            q = t * s.grad_t - 0.5 * d + 0.5 * z.flatten(1).square().sum(1)  # t l_TSM^(1/2)
            tsm = q.square() * t ** (self.tsm_exponent - 2) / d**self.tsm_exponent
        return LossTerms(total=dsm + self.tsm_weight * tsm, dsm=dsm, tsm=tsm)


@dataclass(frozen=True)
class Denoising:
    """The score-network baseline's loss, ``||D - x||^2 / (d t)``: DSM with a = 1 on s(y, t)."""

    def __call__(self, model: ScoreModel, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> LossTerms:
        y = x + bcast(t.sqrt(), x) * z
        r = (y - bcast(t, y) * model(y, t) - x).flatten(1).square().sum(1)  # D = y - t s; DDP-safe
        dsm = r / (unwrap(model).dim * t)
        return LossTerms(total=dsm, dsm=dsm)


def loss_by_band(t: torch.Tensor, values: torch.Tensor, edges: list[float]) -> dict[str, tuple[float, int]]:
    """Group per-example ``values`` by noise band: ``{"[lo,hi)": (mean, count)}``.

    edges: increasing t boundaries; examples outside them are dropped. Used to log losses
    per noise band (as improved-diffusion logs per quartile of t).
    """
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (t >= lo) & (t < hi)
        if m.any():
            out[f"[{lo:g},{hi:g})"] = (float(values[m].mean()), int(m.sum()))
    return out
