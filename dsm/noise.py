"""Noise levels and noising.

Conventions (design.md section 2): ``t`` is the noise *variance*, pixels live in [0, 1],
``y = x + sqrt(t) * z`` with ``z ~ N(0, I)``, and ``PSNR = -10 log10(t)`` dB.

Noise-level distributions are registered by name in :data:`T_SAMPLERS` so a config can pick
one with a string (``t_sampler: log_uniform``) and new ones can be added without touching
callers.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

import torch

from dsm.validate import check_finite, check_positive_t


# --------------------------------------------------------------------- conversions
def t_to_sigma(t: torch.Tensor | float) -> torch.Tensor | float:
    """Noise std ``sigma = sqrt(t)``."""
    return t**0.5


def sigma_to_t(sigma: torch.Tensor | float) -> torch.Tensor | float:
    """Noise variance ``t = sigma**2``."""
    return sigma**2


def t_to_psnr(t: torch.Tensor | float) -> torch.Tensor | float:
    """PSNR in dB of noise with variance ``t`` on [0, 1] images: ``-10 log10(t)``."""
    if isinstance(t, torch.Tensor):
        return -10.0 * torch.log10(t)
    return -10.0 * math.log10(t)


def psnr_to_t(psnr_db: torch.Tensor | float) -> torch.Tensor | float:
    """Noise variance for a PSNR in dB: ``10 ** (-psnr / 10)``."""
    return 10.0 ** (-psnr_db / 10.0)


def add_noise(x: torch.Tensor, t: torch.Tensor, z: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(y, z)`` with ``y = x + sqrt(t) z``.

    x: (B, *shape); t: (B,) variances (> 0 is not required: t = 0 gives y = x);
    z: optional (B, *shape) standard normal noise, drawn here when omitted.
    """
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must have shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
    if z is None:
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + bcast(t.sqrt(), x) * z, z


def bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View a per-example (B,) tensor as (B, 1, ..., 1) to broadcast against ``like``."""
    return v.reshape(v.shape[0], *([1] * (like.ndim - 1)))


# ------------------------------------------------------------------------ samplers
class TSampler(Protocol):
    """Draws ``n`` noise variances: ``sampler(n, generator, device) -> (n,) float tensor``."""

    t_min: float
    t_max: float

    def __call__(self, n: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor: ...


T_SAMPLERS: dict[str, Callable[..., TSampler]] = {}


def register_t_sampler(name: str):
    """Class decorator adding a sampler to :data:`T_SAMPLERS` under ``name``."""

    def deco(cls):
        T_SAMPLERS[name] = cls
        return cls

    return deco


def make_t_sampler(name: str, t_min: float, t_max: float, **kwargs) -> TSampler:
    """Build a registered sampler; unknown names list the known ones."""
    if name not in T_SAMPLERS:
        raise ValueError(f"unknown t sampler {name!r}; known: {sorted(T_SAMPLERS)}")
    return T_SAMPLERS[name](t_min=t_min, t_max=t_max, **kwargs)


class _RangeSampler:
    def __init__(self, t_min: float, t_max: float):
        if not (t_min > 0 and math.isfinite(t_min)):
            raise ValueError(f"t_min must be a positive finite variance, got {t_min}")
        if not (t_max > t_min and math.isfinite(t_max)):
            raise ValueError(f"t_min must be < t_max, got t_min={t_min}, t_max={t_max}")
        self.t_min, self.t_max = float(t_min), float(t_max)

    def _uniform(self, n, generator, device):
        return torch.rand(n, generator=generator, device=device, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t_min={self.t_min:g}, t_max={self.t_max:g})"


@register_t_sampler("log_uniform")
class LogUniform(_RangeSampler):
    """log t uniform on [log t_min, log t_max] (the paper's choice)."""

    def __call__(self, n, generator=None, device="cpu"):
        lo, hi = math.log(self.t_min), math.log(self.t_max)
        return torch.exp(lo + (hi - lo) * self._uniform(n, generator, device)).float()


@register_t_sampler("stratified_log_uniform")
class StratifiedLogUniform(_RangeSampler):
    """Log-uniform with one draw per equal-width stratum of log t (lower variance per batch).

    The batch is a random permutation of the strata so examples do not see t in order.
    """

    def __call__(self, n, generator=None, device="cpu"):
        lo, hi = math.log(self.t_min), math.log(self.t_max)
        u = (torch.arange(n, device=device, dtype=torch.float64) + self._uniform(n, generator, device)) / n
        u = u[torch.randperm(n, generator=generator, device=device)]
        return torch.exp(lo + (hi - lo) * u).float()


def check_t(t: torch.Tensor, batch: int | None = None, allow_zero: bool = False) -> torch.Tensor:
    """Validate a (B,) tensor of noise variances; returns it unchanged."""
    if t.ndim != 1:
        raise ValueError(f"t must be a 1-D tensor of per-example variances, got shape {tuple(t.shape)}")
    if batch is not None and t.shape[0] != batch:
        raise ValueError(f"t has {t.shape[0]} entries but the batch has {batch} examples")
    check_finite(t, "t")
    check_positive_t(t, allow_zero=allow_zero)
    return t
