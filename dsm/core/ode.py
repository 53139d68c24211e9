"""log p(x) by the probability-flow ODE: an independent check on the normalization.

With t the noise variance the PF-ODE is ``dy/dt = 1/2 grad_y U(y, t)``, and along it
``log p(x, 0) = log p(y_T, T) + 1/2 int_0^T Laplacian_y U(y(t), t) dt``. The prior at T is
the Gaussian limit ``N(mean, diag(var) + T I)``. Only the spatial score is used (no dU/dt,
no log Z), so agreement with ``-U(x, 0) - log Z`` validates both TSM and the normalization.

The integration runs in s = log t from t0 to T with Heun's method (second order, two
evaluations per step); the stretch [0, t0] adds ``t0/2 * Laplacian U(x, t0)`` (first order).
The Laplacian is exact (d Hessian-vector products) for small d, or a Hutchinson estimate
with Rademacher probes held fixed along each trajectory otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from dsm.core.energy import Energy
from dsm.core.normalize import DataMoments
from dsm.core.seeding import default_keys, keyed_rademacher


@dataclass
class OdeLogProb:
    """log p(x) in nats (B,), with the Hutchinson standard error (zeros when exact).

    nfe: evaluations of the drift (each one gradient of U plus the Laplacian);
    grad_evals: backward passes through the network (gradient + Hessian-vector products).
    """

    log_prob: torch.Tensor
    stderr: torch.Tensor
    nfe: int
    grad_evals: int


def laplacian(model: Energy, y: torch.Tensor, t: torch.Tensor, probes: torch.Tensor | None = None):
    """grad_y U and the Laplacian of U at (y, t).

    probes: None for the exact trace (d HVPs), else (P, B, *event_shape) Rademacher vectors
    for Hutchinson; returns (grad (B, ...), laplacian (B,) or per-probe (P, B), n_backward).
    """
    y = y.detach().requires_grad_(True)
    s = model.scores(y, t, create_graph=True)
    g = s.grad_y
    flat = g.flatten(1)
    if probes is None:
        rows = []
        for i in range(flat.shape[1]):
            (h,) = torch.autograd.grad(flat[:, i].sum(), y, retain_graph=True)
            rows.append(h.flatten(1)[:, i])
        return g.detach(), torch.stack(rows, 1).sum(1).detach(), 1 + flat.shape[1]
    est = []
    for v in probes:
        (hv,) = torch.autograd.grad((g * v).sum(), y, retain_graph=True)
        est.append((hv * v).flatten(1).sum(1))
    return g.detach(), torch.stack(est).detach(), 1 + len(probes)


def ode_log_prob(model: Energy, x: torch.Tensor, *, prior: DataMoments, t_end: float = 1e3,
                 t_start: float = 1e-6, steps: int = 64,
                 trace: Literal["exact", "hutchinson"] = "exact", n_probes: int = 4,
                 keys: Sequence | None = None, salt: str = "ode", to_zero: bool = True) -> OdeLogProb:
    """Integrate the PF-ODE from each x (B, *event_shape) at t_start to t_end.

    prior: data moments defining the Gaussian prior at t_end. steps: Heun steps, uniform in
    log t. trace: exact Laplacian or Hutchinson with ``n_probes`` probes (seeded per key).
    to_zero: return log p(x, 0), adding the [0, t_start] stretch; False returns the density
    at t_start itself, log p(x, t_start), which is what a model floored at t_start defines.
    """
    if not 0 < t_start < t_end:
        raise ValueError(f"need 0 < t_start < t_end, got t_start={t_start}, t_end={t_end}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
    if trace == "hutchinson" and n_probes < 2:
        raise ValueError(f"n_probes must be >= 2 so that the Hutchinson estimate has an error bar, got {n_probes}")
    n = x.shape[0]
    model.check_inputs(x, torch.zeros(n, dtype=x.dtype, device=x.device))
    probes = None
    if trace == "hutchinson":
        keys = list(keys) if keys is not None else default_keys(n)
        probes = keyed_rademacher(keys, (n_probes, *x.shape[1:]), salt=salt, dtype=x.dtype,
                                  device=x.device).transpose(0, 1)  # (P, B, ...)
    nfe = backward = 0

    def drift(y, t):
        nonlocal nfe, backward
        tt = torch.full((n,), t, dtype=x.dtype, device=x.device)
        g, lap, nb = laplacian(model, y, tt, probes)
        nfe += 1
        backward += nb
        return 0.5 * t * g, 0.5 * t * lap.double()  # d/ds of (y, accumulated log-density)

    log_ts = torch.linspace(math.log(t_start), math.log(t_end), steps + 1, dtype=torch.float64).tolist()
    y = x.detach().clone()
    acc = drift(y, t_start)[1] if to_zero else 0.0  # t0/2 * Laplacian covers [0, t0] to first order
    for s0, s1 in zip(log_ts[:-1], log_ts[1:]):
        h = s1 - s0
        k1y, k1a = drift(y, math.exp(s0))
        y_pred = y + h * k1y
        k2y, k2a = drift(y_pred, math.exp(s1))
        y = y + 0.5 * h * (k1y + k2y)
        acc = acc + 0.5 * h * (k1a + k2a)
    tt = torch.full((n,), t_end, dtype=torch.float64)
    logp = prior.log_q(y, tt.to(y.device)) + acc  # acc is (B,) exact, or (P, B) per probe
    if probes is None:
        return OdeLogProb(logp, torch.zeros(n, dtype=torch.float64), nfe, backward)
    return OdeLogProb(logp.mean(0), logp.std(0) / math.sqrt(n_probes), nfe, backward)


__all__ = ["ode_log_prob", "laplacian", "OdeLogProb"]
