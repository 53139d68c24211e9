"""Energies U(y, t) ~ -log p(y, t) + log Z, their scores, and the denoiser they imply.

Every density in dsm, learned (:class:`EnergyModel`) or exact (:mod:`dsm.core.toy`), is an
:class:`Energy`: it maps noisy inputs ``y`` of shape (B, *event_shape) and noise variances
``t`` of shape (B,) to energies of shape (B,) in nats. Anything written against
:class:`Energy` (losses, normalization, d_eff, the PF-ODE) therefore runs on an exact
density as well as on a model, which is how the tests check the estimators.

Three parameterizations of a learned energy (docs/design.md section 2):

``inner``
    ``U = 1/2 <y~, f(y~, t)>``, the paper's. With a homogeneous backbone ``f`` this keeps
    the score network's inductive bias, but it forces ``U(0, t) = 0`` for every t.
``inner+c``
    ``inner`` plus a learned scalar ``c(t)``; lifts the ``U(0, t) = 0`` constraint, which
    distorts low-dimensional toys whose mass sits near the origin.
``scalar``
    a direct scalar head: ``U = 1/2 ||y~||^2 + d * h(y~, t)`` (y~ = c_in y).

Scalings (``scaling=``), with c_in, c_out per example and ``U_inner = c_out/2 <y, f(c_in y, t)>``:

``variance``  c_in = c_out = 1/sqrt(sigma_data^2 + t): the backbone sees O(1) inputs at every
              noise level (EDM's c_in); the MLP default.
``inverse_t`` c_in = 1, c_out = 1/max(t, t_floor): f predicts the noise residual y - D, as a
              bias-free denoiser does. The floor keeps U(x, 0) defined.
``none``      c_in = c_out = 1: the network output is the score itself; the paper's form and
              the UNet default (docs/unet.md says why not ``inverse_t``).

All three are linear in y, so a homogeneous backbone gives a degree-2 homogeneous U. The
scalar form's Gaussian reference is ``c_in c_out / 2 ||y||^2``. Scalar outputs are multiplied
by d so that the network predicts nats per dimension.

Under ``bf16`` (:mod:`dsm.core.precision`) only the backbone runs in bfloat16: U, its reductions
and the c(t) head are computed in the input's dtype (float32) with autocast off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from dsm.core.noise import bcast, check_t
from dsm.core.precision import as_dtype, full_precision
from dsm.core.validate import check_batch, check_finite

EnergyForm = Literal["inner", "inner+c", "scalar"]
ENERGY_FORMS: tuple[str, ...] = ("inner", "inner+c", "scalar")
Scaling = Literal["none", "variance", "inverse_t"]
SCALINGS: tuple[str, ...] = ("none", "variance", "inverse_t")


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
    0 for exact densities and set by :mod:`dsm.core.normalize` for models.
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
        return autograd_scores(self, y, t, create_graph)

    def denoise(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``D(y, t) = y - t grad_y U``: the posterior mean E[x | y] if U is exact."""
        return self.scores(y, t).denoised(y, t)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized ``log p(x) = -U(x, 0) - log Z`` in nats, shape (B,)."""
        t0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        self.check_inputs(x, t0)
        with torch.no_grad():
            return -self.energy(x, t0).double() - self.log_z


def autograd_scores(energy_fn, y: torch.Tensor, t: torch.Tensor, create_graph: bool = False) -> Scores:
    """Scores of ``energy_fn(y, t) -> (B,)`` from one ``autograd.grad`` call (see Energy.scores)."""
    with torch.enable_grad():
        y_in = y if (create_graph and y.requires_grad) else y.detach().requires_grad_(True)
        t_in = t if (create_graph and t.requires_grad) else t.detach().requires_grad_(True)
        u = energy_fn(y_in, t_in)
        gy, gt = torch.autograd.grad(u.sum(), (y_in, t_in), create_graph=create_graph)
    if not create_graph:
        u, gy, gt = u.detach(), gy.detach(), gt.detach()
    return Scores(u, gy, gt)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def as_input(model: nn.Module, x: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Data ``x`` (B, *shape) as ``model``'s input (B, *event_shape): as it is, or flattened for a
    model of vectors (an MLP on images). The one flatten rule, for training, evaluation,
    normalization and scoring. shape: the data shape the model was trained on, when known (a
    bundle's); otherwise any shape with the model's number of values flattens. Raises
    ValueError naming both shapes."""
    event = tuple(unwrap(model).event_shape)
    got = tuple(x.shape[1:])
    if got == event:
        return x
    if len(event) == 1 and math.prod(got) == event[0] and (shape is None or got == tuple(shape)):
        return x.flatten(1)
    raise ValueError(f"data of shape {got} does not match the model's {tuple(shape) if shape else event}")


def compute_scores(model: nn.Module, y: torch.Tensor, t: torch.Tensor, create_graph: bool = False) -> Scores:
    """``model.scores`` for an :class:`Energy`, also when it is wrapped in DDP.

    Under DDP the energy must go through the wrapper's forward (``Energy.forward`` is the
    energy) so that gradients are all-reduced in the one ``backward()`` that follows.
    """
    inner = unwrap(model)
    if inner is model:
        return model.scores(y, t, create_graph)
    inner.check_inputs(y, t)
    return autograd_scores(model, y, t, create_graph)


class EnergyModel(Energy):
    """A learned energy built from any backbone ``f(y, t)``.

    backbone: maps (B, *event_shape), (B,) to (B, *event_shape) for the inner forms, or to
        (B,) / (B, 1) for ``scalar``.
    form: one of :data:`ENERGY_FORMS`.
    c_net: maps t (B,) to (B,); required by ``inner+c`` (the learned c(t), in nats/dim).
    scaling: one of :data:`SCALINGS` (module docstring); ``variance`` needs ``sigma_data``.
    t_floor: noise variance below which ``inverse_t`` stops growing (the training t_min).
    additive_normalization: add ``(d/2) log max(t, t_floor)`` to U, the official code's
        option: the normalizer of the near-Gaussian large-t limit then needs no learning
        (the inner forms' U(0, t) = 0 cannot carry it otherwise). Needs t_floor > 0, which
        keeps U(x, 0) finite.
    """

    def __init__(self, backbone: nn.Module, event_shape: tuple[int, ...], form: EnergyForm = "inner",
                 c_net: nn.Module | None = None, sigma_data: float | None = None,
                 scaling: Scaling | None = None, t_floor: float = 0.0, additive_normalization: bool = False):
        super().__init__(event_shape)
        if form not in ENERGY_FORMS:
            raise ValueError(f"energy form must be one of {ENERGY_FORMS}, got {form!r}")
        if form == "inner+c" and c_net is None:
            raise ValueError("energy form 'inner+c' needs a c_net (the learned scalar c(t))")
        if additive_normalization and not t_floor > 0:
            raise ValueError(f"additive_normalization needs t_floor > 0 (the training t_min), got {t_floor}")
        self.scaling = _check_scaling(scaling, sigma_data, t_floor)
        self.backbone, self.form, self.c_net = backbone, form, c_net
        self.sigma_data, self.t_floor = sigma_data, float(t_floor)
        self.additive_normalization = bool(additive_normalization)

    def energy(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c_in, c_out = _input_output_scales(self.scaling, self.sigma_data, self.t_floor, t)
        d = self.dim
        yt = y * bcast(c_in, y)
        yy = y.flatten(1)
        # Only the backbone runs under autocast (bf16): its output goes back to y's dtype and the
        # reductions over d pixels, the c(t) head and the log-t term are done with autocast off,
        # since a bf16 sum over d terms would carry an error of order sqrt(d) * 2^-8 relative.
        out = as_dtype(self.backbone(yt, t), y)
        with full_precision(y.device):
            if self.form == "scalar":
                h = out.reshape(y.shape[0])
                return self._additive(0.5 * c_in * c_out * yy.square().sum(1) + d * h, t)
            u = 0.5 * c_out * (yy * out.flatten(1)).sum(1)
            if self.form == "inner+c":
                u = u + d * as_dtype(self.c_net(t), u).reshape(y.shape[0])
            return self._additive(u, t)

    def _additive(self, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.additive_normalization:
            return u
        return u + 0.5 * self.dim * torch.log(t.clamp_min(self.t_floor)).to(u.dtype)


def _check_scaling(scaling, sigma_data, t_floor) -> str:
    if scaling is None:  # default: precondition when a data scale is known
        scaling = "variance" if sigma_data is not None else "none"
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    if scaling == "variance" and not (sigma_data is not None and sigma_data > 0):
        raise ValueError(f"scaling 'variance' needs sigma_data > 0, got {sigma_data}")
    if scaling == "inverse_t" and not t_floor > 0:
        raise ValueError(f"scaling 'inverse_t' needs t_floor > 0 (the training t_min), got {t_floor}")
    return scaling


def _input_output_scales(scaling: str, sigma_data, t_floor: float, t: torch.Tensor):
    """Per-example (c_in, c_out), each (B,)."""
    if scaling == "variance":
        c = torch.rsqrt(sigma_data**2 + t.clamp_min(t_floor))
        return c, c
    one = torch.ones_like(t)
    if scaling == "inverse_t":
        return one, 1 / t.clamp_min(t_floor)
    return one, one


class ScoreModel(nn.Module):
    """The score-network baseline: ``s(y, t) = c_out f(c_in y, t)``.

    Same backbone and scalings as :class:`EnergyModel`, but the score is the network output
    itself (not a gradient), so it needs no double backpropagation and has no energy. With
    ``inverse_t``, ``D = y - t s = y - f`` for t >= t_floor: f is the noise residual.
    """

    def __init__(self, backbone: nn.Module, event_shape: tuple[int, ...], sigma_data: float | None = None,
                 scaling: Scaling | None = None, t_floor: float = 0.0):
        super().__init__()
        self.scaling = _check_scaling(scaling, sigma_data, t_floor)
        self.backbone, self.event_shape = backbone, tuple(event_shape)
        self.sigma_data, self.t_floor = sigma_data, float(t_floor)

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    def score(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Estimate of grad_y U = -grad_y log p(y, t), shape of ``y``."""
        check_batch(y, self.event_shape, "y")
        check_t(t, batch=y.shape[0], allow_zero=True)
        c_in, c_out = _input_output_scales(self.scaling, self.sigma_data, self.t_floor, t)
        return bcast(c_out, y) * self.backbone(y * bcast(c_in, y), t)

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.score(y, t)

    def denoise(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``D = y - t s(y, t)``."""
        return y - bcast(t, y) * self.score(y, t)
