"""Reverse-diffusion sampling driven by an energy's score (no Ray, no MLflow).

The forward process is the heat flow in noise *variance* t: y_t = x + sqrt(t) z. A sampler
only needs the denoiser D(y, t) = y - t grad_y U(y, t) (Tweedie), which every
:class:`dsm.core.energy.Energy` gives from one autograd call.

Scheme: DDIM written in variance t, with a stochasticity knob ``eta``. One step from t to
t' < t, with D = D(y, t) and the estimated noise direction (y - D) / sqrt(t):

    s^2 = eta^2 * t' (t - t') / t
    y'  = D + sqrt(t' - s^2) * (y - D) / sqrt(t) + s * z,      z ~ N(0, I)

- ``eta = 0`` (default): deterministic; the probability-flow ODE dy/dt = 1/2 grad_y U,
  i.e. dy/dsigma = (y - D)/sigma with sigma = sqrt(t), integrated exactly over the step
  with D frozen at its start. Same start noise -> same sample.
- ``eta = 1``: ancestral sampling: y' is drawn from the exact posterior of the heat process,
  p(y_t' | y_t, x) = N(x + (t'/t)(y_t - x), t'(t - t')/t I), with x replaced by D.

Both converge to the model's density as the steps shrink. The t schedule is geometric from
t_max down to t_min (``steps`` steps, ``steps + 1`` levels); the returned samples are the
final denoised D(y_{t_min}, t_min), not the noisy y_{t_min}.

Seeding: the start y_{t_max} = mean + sqrt(t_max) z draws z of shape (n, *event_shape) in
float64 on the CPU from ``torch.Generator().manual_seed(seed)`` and nothing else, so two
models with the same event shape and the same seed start from the same noise (the
memorization comparison of models trained on disjoint data). The per-step noise of
``eta > 0`` comes from a generator seeded by (seed, step index). Batching only bounds
memory: the samples do not depend on ``batch_size``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dsm.core.energy import Energy, compute_scores
from dsm.core.seeding import key_seed

StepCallback = Callable[[int, float, torch.Tensor], None]


def t_schedule(t_max: float, t_min: float, steps: int) -> torch.Tensor:
    """Geometric noise variances t_max = t_0 > t_1 > ... > t_steps = t_min, float64 (steps + 1,)."""
    if not (0 < t_min < t_max):
        raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min:g}, t_max={t_max:g}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.logspace(math.log10(t_max), math.log10(t_min), steps + 1, dtype=torch.float64)


def start_noise(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard normal z, (n, *shape) float64 on the CPU, a function of (n, shape, seed) only."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn((n, *shape), generator=g, dtype=torch.float64)


def _step_noise(n: int, shape: tuple[int, ...], seed: int, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(key_seed(step, salt=f"dsm.sample:{seed}"))
    return torch.randn((n, *shape), generator=g, dtype=torch.float64)


def _denoise(energy: Energy, y: torch.Tensor, t: float) -> torch.Tensor:
    tt = torch.full((y.shape[0],), t, dtype=y.dtype, device=y.device)
    return compute_scores(energy, y, tt).denoised(y, tt).detach()


def ddim_step(y: torch.Tensor, d: torch.Tensor, t: float, t_next: float, eta: float,
              z: torch.Tensor | None) -> torch.Tensor:
    """One step from variance t to t_next < t given D = D(y, t) (module docstring); z needed when eta > 0."""
    s2 = eta ** 2 * t_next * (t - t_next) / t
    y_next = d + math.sqrt(max(t_next - s2, 0.0) / t) * (y - d)
    if s2 > 0:
        y_next = y_next + math.sqrt(s2) * z
    return y_next


def sample(energy, n: int, *, seed: int = 0, steps: int = 100, t_max: float = 1e3, t_min: float = 1e-4,
           mean: float | torch.Tensor = 0.0, eta: float = 0.0, batch_size: int = 256,
           device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, progress: bool = False,
           callback: StepCallback | None = None) -> torch.Tensor:
    """Draw n samples from ``energy``'s density by reverse diffusion; returns D(y_{t_min}, t_min).

    energy: a :class:`Energy` (a model or an exact density from :mod:`dsm.core.toy`) or a
        :class:`dsm.api.Model` (its energy is used, and the samples take its data shape).
    mean: the start's centre, a scalar or a tensor of the event shape (0.5 suits [0, 1] images).
    eta: 0 deterministic (probability flow), 1 ancestral; anything in between interpolates.
    callback: called as ``callback(k, t_k, y)`` with the full (n, *shape) noisy batch at
        every level k = 0..steps before denoising (k = 0 is the start noise).
    Returns (n, *event_shape) in ``dtype`` on ``device`` (the Model's data shape for a Model).
    """
    out_shape = None
    if hasattr(energy, "energy_model"):  # a dsm.api.Model: sample in the model's input shape
        out_shape = tuple(energy.shape)
        energy = energy.energy_model
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    shape = tuple(energy.event_shape)
    ts = t_schedule(t_max, t_min, steps).tolist()
    mean_t = torch.as_tensor(mean, dtype=torch.float64)
    y = (mean_t + math.sqrt(t_max) * start_noise(n, shape, seed)).to(device=device, dtype=dtype)
    levels = range(steps + 1)
    if progress:
        from tqdm.auto import tqdm

        levels = tqdm(levels, desc="sampling", unit="step")
    for k in levels:
        t = ts[k]
        if callback is not None:
            callback(k, t, y)
        z = _step_noise(n, shape, seed, k).to(device=device, dtype=dtype) if (eta > 0 and k < steps) else None
        nxt = torch.empty_like(y)
        for a in range(0, n, batch_size):
            yb = y[a:a + batch_size]
            d = _denoise(energy, yb, t)
            nxt[a:a + batch_size] = d if k == steps else ddim_step(
                yb, d, t, ts[k + 1], eta, None if z is None else z[a:a + batch_size])
        y = nxt
    return y if out_shape is None else y.reshape(n, *out_shape)
