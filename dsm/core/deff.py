"""Effective dimensionality d_eff(x, t), by two estimators that must agree.

For ``y = x + sqrt(t) z`` (docs/design.md section 2):

(a) denoising:  ``d_eff = E_z ||x - D(y, t)||^2 / t``
(b) time score: ``d_eff = d - 2t E_z[dU/dt(y, t) + grad_y U(y, t) . z / (2 sqrt t)]``

They agree for any density that obeys the heat equation, so on a trained model their gap is
a free self-consistency check. For x ~ N(mu, diag(lambda)) the mean over x is
``sum_i lambda_i / (lambda_i + t)``. Both use the *same* K noise draws per example, seeded
from the example's key, so the gap has low variance and no dependence on batch layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dsm.core.energy import Energy
from dsm.core.noise import bcast
from dsm.core.seeding import default_keys, keyed_normal


@dataclass
class DEff:
    """Per-example d_eff by both estimators with the Monte Carlo standard errors over K, (B,)."""

    denoising: torch.Tensor
    time: torch.Tensor
    denoising_stderr: torch.Tensor
    time_stderr: torch.Tensor
    t: float


def d_eff(model: Energy, x: torch.Tensor, t: float, n_noise: int = 8, keys: Sequence | None = None,
          salt: str = "d_eff", batch_size: int = 256) -> DEff:
    """d_eff(x, t) for clean x (B, *event_shape) at one noise variance ``t`` > 0.

    n_noise: K noise samples per example. keys: per-example seeds (default: row index); the
    draws for (key, t) are the same whatever the batch.
    """
    if not t > 0:
        raise ValueError(f"d_eff needs a noise variance t > 0, got {t}")
    if n_noise < 2:
        raise ValueError(f"n_noise must be >= 2 to report a standard error, got {n_noise}")
    n, d = x.shape[0], model.dim
    keys = list(keys) if keys is not None else default_keys(n)
    if len(keys) != n:
        raise ValueError(f"got {len(keys)} keys for {n} examples")
    model.check_inputs(x, torch.zeros(n, dtype=x.dtype, device=x.device))
    per_a, per_b = [], []
    chunk = max(1, batch_size // n_noise)
    for i in range(0, n, chunk):
        xb = x[i:i + chunk]
        b = xb.shape[0]
        z = keyed_normal(keys[i:i + chunk], (n_noise, *xb.shape[1:]), salt=f"{salt}:{t!r}",
                         dtype=xb.dtype, device=xb.device).flatten(0, 1)  # (b*K, ...)
        xr = xb.repeat_interleave(n_noise, 0)
        tt = torch.full((b * n_noise,), t, dtype=xb.dtype, device=xb.device)
        y = xr + bcast(tt.sqrt(), xr) * z
        s = model.scores(y, tt)
        a = (xr - s.denoised(y, tt)).flatten(1).double().square().sum(1) / t
        dot = (s.grad_y * z).flatten(1).double().sum(1)
        bb = d - 2 * t * (s.grad_t.double() + dot / (2 * math.sqrt(t)))
        per_a.append(a.reshape(b, n_noise))
        per_b.append(bb.reshape(b, n_noise))
    a, bb = torch.cat(per_a), torch.cat(per_b)
    se = lambda v: v.std(1) / math.sqrt(n_noise)  # noqa: E731
    return DEff(a.mean(1), bb.mean(1), se(a), se(bb), float(t))
