"""The paper's studies that need the model itself (no Ray, no MLflow): an :class:`Energy` and
images in, numpy arrays of log p in dB/dim out.

images are (n, *event_shape) tensors in the model's input shape, pixels in [0, 1]; log p is
normalized with the energy's ``log_z`` (so the energy must be normalized) and converted with
:func:`dsm.core.units.db_per_dim` (10 log10 p / d).

- :func:`logp_affine`: log p(a x + b) over a grid of contrasts a and offsets b (Fig. 4).
- :func:`noisy_logp`: E_z[log p(x + sqrt(t) z, t)] against t, per image (Fig. 5, left).
- :func:`best_constant_image` and :func:`uniform_noise_logp`: the markers of the log p
  histogram (energy_histogram.ipynb): the most probable constant image, and uniform noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dsm.core import units
from dsm.core.energy import Energy
from dsm.core.seeding import default_keys, keyed_normal

CONSTANT_GRID = 101  # the paper's grid of constant images, linspace(0, 1, 101), before refining


def _logp_db(energy: Energy, y: torch.Tensor, t: float | torch.Tensor = 0.0, batch_size: int = 256) -> np.ndarray:
    """-U(y, t) - log Z in dB/dim for y (B, *event_shape), batched; (B,) float64."""
    out = []
    for i in range(0, y.shape[0], batch_size):
        yb = y[i:i + batch_size]
        tb = torch.as_tensor(t, dtype=yb.dtype, device=yb.device).expand(yb.shape[0]).contiguous()
        energy.check_inputs(yb, tb)
        with torch.no_grad():
            logp = -energy.energy(yb, tb).double() - energy.log_z.to(yb.device)
        out.append(units.db_per_dim(logp, energy.dim).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def logp_affine(energy: Energy, images: torch.Tensor, a: Sequence[float], b: Sequence[float],
                batch_size: int = 256) -> np.ndarray:
    """log p(a x + b) in dB/dim for every image x, contrast a and offset b: (n, len(b), len(a)).

    The paper's grid is a, b in linspace(0, 1, 101); it shows the contrast curve at b = 1/2
    and, for one image, the (a, b) map where a + b <= 1 (so that a x + b stays in [0, 1])."""
    a_t = torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=images.dtype, device=images.device)
    b_t = torch.as_tensor(np.asarray(b, dtype=np.float64), dtype=images.dtype, device=images.device)
    out = np.empty((images.shape[0], len(b_t), len(a_t)))
    view = (-1,) + (1,) * (images.ndim - 1)
    rows = max(1, batch_size // len(a_t))  # offsets per call, so that a call holds about batch_size images
    for i, x in enumerate(images):
        for j in range(0, len(b_t), rows):
            bs = b_t[j:j + rows]
            y = a_t.reshape(view)[None] * x[None, None] + bs.reshape(view)[:, None]  # (rows, A, *shape)
            out[i, j:j + len(bs)] = _logp_db(energy, y.flatten(0, 1), 0.0, batch_size).reshape(len(bs), len(a_t))
    return out


@dataclass
class NoisyLogp:
    """E_z[log p(x + sqrt(t) z, t)] per image and t, dB/dim, (n, T), with its Monte Carlo
    standard error over the K draws (zeros when K = 1)."""

    t: np.ndarray  # (T,) noise variances
    mean: np.ndarray  # (n, T)
    stderr: np.ndarray  # (n, T)
    n_noise: int


def noisy_logp(energy: Energy, images: torch.Tensor, ts: Sequence[float], n_noise: int = 16,
               keys: Sequence | None = None, salt: str = "noisy_logp", batch_size: int = 256) -> NoisyLogp:
    """The log probability of noisy versions of each image, averaged over ``n_noise`` draws
    (the paper averages 1000), at each noise variance in ``ts``: log p(y, t) = -U(y, t) - log Z,
    the same log Z at every t (Z is constant in t for a model obeying the heat equation).

    Image i's draws z_1..z_K are seeded by ``keys[i]`` (default: row index) and shared by all t,
    so each curve is smooth in t and independent of batching."""
    if n_noise < 1:
        raise ValueError(f"n_noise must be >= 1, got {n_noise}")
    n = images.shape[0]
    keys = list(keys) if keys is not None else default_keys(n)
    ts = np.asarray(ts, dtype=np.float64)
    mean, stderr = np.empty((n, len(ts))), np.zeros((n, len(ts)))
    chunk = max(1, batch_size // n_noise)  # images per call, so that a call holds about batch_size draws
    for i in range(0, n, chunk):
        x = images[i:i + chunk]
        z = keyed_normal(keys[i:i + chunk], (n_noise, *x.shape[1:]), salt=salt, dtype=x.dtype, device=x.device)
        for j, t in enumerate(ts):
            y = (x[:, None] + float(np.sqrt(t)) * z).flatten(0, 1)
            v = _logp_db(energy, y, float(t), batch_size).reshape(len(x), n_noise)
            mean[i:i + len(x), j] = v.mean(1)
            if n_noise > 1:
                stderr[i:i + len(x), j] = v.std(1, ddof=1) / np.sqrt(n_noise)
    return NoisyLogp(ts, mean, stderr, n_noise)


def best_constant_image(energy: Energy, lo: float = 0.0, hi: float = 1.0, dtype=torch.float32,
                        device: str | torch.device = "cpu") -> tuple[float, float]:
    """The constant image c * 1 of highest log p for c in [lo, hi]: (c, log p in dB/dim).

    The paper takes the best of 101 values; this refines that grid's best with a bounded 1-D
    search between its neighbours (scipy.optimize.minimize_scalar)."""
    from scipy.optimize import minimize_scalar

    shape = tuple(energy.event_shape)

    def logp(cs) -> np.ndarray:
        c = torch.as_tensor(np.atleast_1d(cs), dtype=dtype, device=device)
        return _logp_db(energy, c.reshape((-1,) + (1,) * len(shape)) * torch.ones(shape, dtype=dtype, device=device))

    grid = np.linspace(lo, hi, CONSTANT_GRID)
    k = int(np.argmax(logp(grid)))
    left, right = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    res = minimize_scalar(lambda c: -float(logp(c)[0]), bounds=(left, right), method="bounded",
                          options={"xatol": 1e-6 * (hi - lo)})
    best = (float(res.x), -float(res.fun))
    grid_best = (float(grid[k]), float(logp(grid[k])[0]))
    return best if best[1] >= grid_best[1] else grid_best


def uniform_noise_logp(energy: Energy, n: int = 100, seed: int = 0, dtype=torch.float32,
                       device: str | torch.device = "cpu") -> np.ndarray:
    """log p in dB/dim of n images of i.i.d. U[0, 1) pixels (seeded), (n,); the paper marks the mean of 100."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand((n, *energy.event_shape), generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return _logp_db(energy, u)
