"""Dual score matching and the plain denoising loss, per example.

With ``y = x + sqrt(t) z`` and d dimensions (docs/design.md section 2):

- ``l_DSM = ||grad_y U - (y - x)/t||^2``
- ``l_TSM = (dU/dt - d/(2t) + ||y - x||^2/(2 t^2))^2``
- loss = ``(t/d)^a l_DSM + lambda (t/d)^b l_TSM``, with a = 1, b = 2, lambda = 1 in the paper.

Both terms are computed in the residual form that never forms 1/t^2 of a large number:
``r = t grad_y U - sqrt(t) z = (x - D)`` gives ``l_DSM = ||r||^2 / t^2`` and
``q = t dU/dt - d/2 + ||z||^2/2`` gives ``l_TSM = q^2 / t^2``. For a = 1, b = 2 the weighted
terms are ``||D - x||^2/(d t)`` and ``(q/d)^2``.

An optional regularizer (``heat_weight`` > 0, off by default) asks the model to obey the heat
(score Fokker-Planck) equation that every family p(., t) = p_0 * N(0, t I) obeys: for
U = -log p + c, ``R = dU/dt - (1/2) Laplacian U + (1/2) ||grad_y U||^2 = 0``. It needs no data
(only the model at the noisy points), and its term is ``(t R / d)^2``, on the scale of the TSM
term, estimated without bias from two independent Hutchinson probes of the Laplacian.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dsm.core.energy import Energy, ScoreModel, autograd_scores, compute_scores, unwrap
from dsm.core.noise import bcast


@dataclass
class LossTerms:
    """Per-example loss terms, each (B,): ``total = dsm + tsm_weight * tsm`` (weighted)."""

    total: torch.Tensor
    dsm: torch.Tensor
    tsm: torch.Tensor | None = None  # None for the score-network baseline
    heat: torch.Tensor | None = None  # the heat-equation regularizer, when it is on


def heat_residual(model: torch.nn.Module, y: torch.Tensor, t: torch.Tensor, probes: int | None = 2,
                  generator: torch.Generator | None = None, create_graph: bool = False) -> torch.Tensor:
    """``t * R`` with ``R = dU/dt - (1/2) Laplacian_y U + (1/2) ||grad_y U||^2`` (nats), shape
    (B, probes): one column per Rademacher probe v, each using the Hutchinson estimate
    ``v^T (Hessian_y U) v`` of the Laplacian (unbiased: E_v[v^T H v] = tr H). ``probes=None``
    takes the exact Laplacian (d Hessian-vector products; for small d) and returns (B, 1).

    R is zero for every exact family p(., t) = p_0 * N(0, t I) (the heat equation), whatever
    the constant c in U = -log p + c. ``model`` may be wrapped in DDP. y: (B, *event_shape);
    t: (B,) variances > 0. With ``create_graph`` the result is differentiable in the parameters.
    """
    inner = unwrap(model)
    inner.check_inputs(y, t)
    with torch.enable_grad():
        y_in = y.detach().requires_grad_(True)
        s = autograd_scores(model, y_in, t, create_graph=True)
        flat_g = s.grad_y.flatten(1)
        if probes is None:
            d = flat_g.shape[1]
            lap = torch.zeros_like(t)
            for i in range(d):
                hi = torch.autograd.grad(flat_g[:, i].sum(), y_in, create_graph=create_graph, retain_graph=True)[0]
                lap = lap + hi.flatten(1)[:, i]
            vhv = lap[:, None]
        else:
            cols = []
            for _ in range(probes):
                v = torch.randint(0, 2, y_in.shape, generator=generator, device=y.device).to(y.dtype) * 2 - 1
                hv = torch.autograd.grad((s.grad_y * v).sum(), y_in, create_graph=create_graph, retain_graph=True)[0]
                cols.append((hv * v).flatten(1).sum(1))
            vhv = torch.stack(cols, 1)
        base = t * s.grad_t + 0.5 * t * flat_g.square().sum(1)
        out = base[:, None] - 0.5 * t[:, None] * vhv
    return out if create_graph else out.detach()


@dataclass(frozen=True)
class DualScoreMatching:
    """The dual score matching loss. ``tsm_weight = 0`` is single score matching.

    dsm_exponent a and tsm_exponent b set the weights (t/d)^a and (t/d)^b.
    """

    tsm_weight: float = 1.0
    dsm_exponent: float = 1.0
    tsm_exponent: float = 2.0
    heat_weight: float = 0.0

    def __post_init__(self):
        if not self.tsm_weight >= 0:
            raise ValueError(f"tsm_weight (lambda) must be >= 0, got {self.tsm_weight}")
        if not self.heat_weight >= 0:
            raise ValueError(f"heat_weight must be >= 0, got {self.heat_weight}")

    @property
    def needs_generator(self) -> bool:
        """The heat regularizer draws Hutchinson probes; train_step then passes its generator."""
        return self.heat_weight > 0

    def __call__(self, model: Energy, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
                 generator: torch.Generator | None = None) -> LossTerms:
        """x, z: (B, *event_shape); t: (B,) variances > 0. Returns per-example terms.

        ``model`` is an :class:`Energy`, or one wrapped in DistributedDataParallel. The heat
        regularizer is added in training mode only, so held-out losses stay comparable
        across heat weights."""
        d = unwrap(model).dim
        y = x + bcast(t.sqrt(), x) * z
        s = compute_scores(model, y, t, create_graph=torch.is_grad_enabled())
        r = (bcast(t, y) * s.grad_y - bcast(t.sqrt(), y) * z).flatten(1).square().sum(1)  # t^2 l_DSM
        dsm = r * t ** (self.dsm_exponent - 2) / d**self.dsm_exponent
        tsm = torch.zeros_like(dsm)
        if self.tsm_weight > 0:
            q = t * s.grad_t - 0.5 * d + 0.5 * z.flatten(1).square().sum(1)  # t l_TSM^(1/2)
            tsm = q.square() * t ** (self.tsm_exponent - 2) / d**self.tsm_exponent
        total = dsm + self.tsm_weight * tsm
        if self.tsm_weight == 0 and s.energy.requires_grad:
            # Single score matching gives parameters that act only through dU/dt (a learned c(t))
            # no gradient at all, and DDP fails on those; an exact zero keeps them in the graph.
            total = total + 0.0 * s.energy
        heat = None
        if self.heat_weight > 0 and unwrap(model).training:
            r = heat_residual(model, y, t, probes=2, generator=generator, create_graph=torch.is_grad_enabled()) / d
            heat = r[:, 0] * r[:, 1]  # two independent probes: an unbiased estimate of (t R / d)^2
            total = total + self.heat_weight * heat
        return LossTerms(total=total, dsm=dsm, tsm=tsm, heat=heat)


@dataclass(frozen=True)
class Denoising:
    """The score-network baseline's loss, ``||D - x||^2 / (d t)``: DSM with a = 1 on s(y, t)."""

    def __call__(self, model: ScoreModel, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> LossTerms:
        y = x + bcast(t.sqrt(), x) * z
        r = (y - bcast(t, y) * model(y, t) - x).flatten(1).square().sum(1)  # D = y - t s; DDP-safe
        dsm = r / (unwrap(model).dim * t)
        return LossTerms(total=dsm, dsm=dsm)


BANDS = 4  # equal log-width bands of [t_min, t_max] in which training and evaluation report the loss


def band_edges(t_min: float, t_max: float, bands: int = BANDS) -> list[float]:
    """The ``bands + 1`` edges of equal log-width bands of [t_min, t_max] (noise variances,
    computed in float64): the one binning of t behind ``train/loss_band*``, ``eval/loss_band*``,
    the consistency checks' heat bands and ``dsm score``'s consistency summary."""
    return torch.logspace(math.log10(t_min), math.log10(t_max), bands + 1, dtype=torch.float64).tolist()


def loss_by_band(t: torch.Tensor, values: torch.Tensor, edges: list[float]) -> dict[int, tuple[float, int]]:
    """Group per-example ``values`` by noise band: ``{band index: (mean, count)}``, bands with
    no example left out.

    edges: increasing t boundaries; band i is [edges[i], edges[i+1]), the last one closed
    ([lo, hi]) so that t_max itself counts; examples outside are dropped. Used to log the
    training loss per noise band (as improved-diffusion logs per quartile of t), in the
    evaluation's bands.
    """
    out = {}
    last = len(edges) - 2
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        m = (t >= lo) & ((t < hi) if i < last else (t <= hi))
        if m.any():
            out[i] = (float(values[m].mean()), int(m.sum()))
    return out
