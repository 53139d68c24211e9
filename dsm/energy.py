"""Energies U(y, t) ~ -log p(y, t) + log Z, their scores, and the denoiser they imply.

Every density in dsm, learned (:class:`EnergyModel`) or exact (:mod:`dsm.toy`), is an
:class:`Energy`: it maps noisy inputs ``y`` of shape (B, *event_shape) and noise variances
``t`` of shape (B,) to energies of shape (B,) in nats. Anything written against
:class:`Energy` (losses, normalization, d_eff, the PF-ODE) therefore runs on an exact
density as well as on a model, which is how the tests check the estimators.

Three parameterizations of a learned energy (design.md section 2):

``inner``
    ``U = 1/2 <y~, f(y~, t)>``, the paper's. With a homogeneous backbone ``f`` this keeps
    the score network's inductive bias, but it forces ``U(0, t) = 0`` for every t.
``inner+c``
    ``inner`` plus a learned scalar ``c(t)``; lifts the ``U(0, t) = 0`` constraint, which
    distorts low-dimensional toys whose mass sits near the origin.
``scalar``
    a direct scalar head: ``U = 1/2 ||y~||^2 + d * h(y~, t)``.

Here ``y~ = y / sqrt(sigma_data^2 + t)`` when ``sigma_data`` is given (input
preconditioning, so the backbone sees O(1) inputs at every noise level; it is linear in y,
so a homogeneous backbone stays homogeneous), and ``y~ = y`` otherwise. Scalar outputs are
multiplied by d so that the network predicts nats per dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from dsm.noise import bcast, check_t
from dsm.validate import check_batch, check_finite

EnergyForm = Literal["inner", "inner+c", "scalar"]
ENERGY_FORMS: tuple[str, ...] = ("inner", "inner+c", "scalar")


@dataclass
class Scores:
    """U and both of its partial derivatives at one batch of ``(y, t)``.

    energy: (B,) nats; grad_y: (B, *event_shape) = dU/dy; grad_t: (B,) = dU/dt (nats per
    unit of variance).
    """

    energy: torch.Tensor
    grad_y: torch.Tensor
    grad_t: torch.Tensor

    def denoised(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Tweedie's denoiser ``D = y - t * grad_y U``, shape of ``y``."""
        return y - bcast(t, y) * self.grad_y


class Energy(nn.Module):
    """Base class: subclasses implement :meth:`energy`; scores come from autograd.

    ``log_z`` (nats, a float64 buffer) is the log normalizing constant of ``exp(-U)``; it is
    0 for exact densities and set by :mod:`dsm.normalize` for models.
    """

    def __init__(self, event_shape: tuple[int, ...]):
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        self.register_buffer("log_z", torch.zeros((), dtype=torch.float64))

    @property
    def dim(self) -> int:
        """Number of dimensions d of one example."""
        return math.prod(self.event_shape)

    def energy(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """U(y, t) in nats, shape (B,)."""
        raise NotImplementedError

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.energy(y, t)

    def check_inputs(self, y: torch.Tensor, t: torch.Tensor, allow_zero_t: bool = True) -> None:
        """Shapes, finiteness and t >= 0, with errors that name the problem."""
        check_batch(y, self.event_shape, "y")
        check_t(t, batch=y.shape[0], allow_zero=allow_zero_t)
        check_finite(y, "y")

    def scores(self, y: torch.Tensor, t: torch.Tensor, create_graph: bool = False) -> Scores:
        """U, grad_y U and dU/dt from one autograd call.

        With ``create_graph=True`` the derivatives stay differentiable, for the training
        loss (parameters) and for Laplacians (``y`` must then require grad itself).
        Without it, everything returned is detached.
        """
        self.check_inputs(y, t)
        with torch.enable_grad():
            y_in = y if (create_graph and y.requires_grad) else y.detach().requires_grad_(True)
            t_in = t if (create_graph and t.requires_grad) else t.detach().requires_grad_(True)
            u = self.energy(y_in, t_in)
            gy, gt = torch.autograd.grad(u.sum(), (y_in, t_in), create_graph=create_graph)
        if not create_graph:
            u, gy, gt = u.detach(), gy.detach(), gt.detach()
        return Scores(u, gy, gt)

    def denoise(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``D(y, t) = y - t grad_y U``: the posterior mean E[x | y] if U is exact."""
        return self.scores(y, t).denoised(y, t)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized ``log p(x) = -U(x, 0) - log Z`` in nats, shape (B,)."""
        t0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        self.check_inputs(x, t0)
        with torch.no_grad():
            return -self.energy(x, t0).double() - self.log_z


class EnergyModel(Energy):
    """A learned energy built from any backbone ``f(y, t)``.

    backbone: maps (B, *event_shape), (B,) to (B, *event_shape) for the inner forms, or to
        (B,) / (B, 1) for ``scalar``.
    form: one of :data:`ENERGY_FORMS`.
    c_net: maps t (B,) to (B,); required by ``inner+c`` (the learned c(t), in nats/dim).
    sigma_data: data std for input preconditioning, or None for none.
    """

    def __init__(self, backbone: nn.Module, event_shape: tuple[int, ...], form: EnergyForm = "inner",
                 c_net: nn.Module | None = None, sigma_data: float | None = None):
        super().__init__(event_shape)
        if form not in ENERGY_FORMS:
            raise ValueError(f"energy form must be one of {ENERGY_FORMS}, got {form!r}")
        if form == "inner+c" and c_net is None:
            raise ValueError("energy form 'inner+c' needs a c_net (the learned scalar c(t))")
        if sigma_data is not None and not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.backbone, self.form, self.c_net, self.sigma_data = backbone, form, c_net, sigma_data

    def precondition(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``y~ = y / sqrt(sigma_data^2 + t)`` (or ``y`` without preconditioning)."""
        if self.sigma_data is None:
            return y
        return y * bcast(torch.rsqrt(self.sigma_data**2 + t), y)

    def energy(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        yt = self.precondition(y, t)
        d = self.dim
        if self.form == "scalar":
            h = self.backbone(yt, t).reshape(y.shape[0])
            return 0.5 * yt.flatten(1).square().sum(1) + d * h
        f = self.backbone(yt, t)
        u = 0.5 * (yt.flatten(1) * f.flatten(1)).sum(1)
        if self.form == "inner+c":
            u = u + d * self.c_net(t).reshape(y.shape[0])
        return u


class ScoreModel(nn.Module):
    """The score-network baseline: ``s(y, t) = f(y~, t) / sqrt(sigma_data^2 + t)``.

    Same backbone and preconditioning as :class:`EnergyModel`, but the score is the network
    output itself (not a gradient), so it needs no double backpropagation and has no energy.
    """

    def __init__(self, backbone: nn.Module, event_shape: tuple[int, ...], sigma_data: float | None = None):
        super().__init__()
        self.backbone, self.event_shape, self.sigma_data = backbone, tuple(event_shape), sigma_data

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    def score(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Estimate of grad_y U = -grad_y log p(y, t), shape of ``y``."""
        check_batch(y, self.event_shape, "y")
        check_t(t, batch=y.shape[0], allow_zero=True)
        if self.sigma_data is None:
            return self.backbone(y, t)
        c = bcast(torch.rsqrt(self.sigma_data**2 + t), y)
        return c * self.backbone(c * y, t)

    def denoise(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``D = y - t s(y, t)``."""
        return y - bcast(t, y) * self.score(y, t)
