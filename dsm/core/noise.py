"""Noise levels and noising.

Conventions (docs/design.md section 2): ``t`` is the noise *variance*, pixels live in [0, 1],
``y = x + sqrt(t) * z`` with ``z ~ N(0, I)``, and ``PSNR = -10 log10(t)`` dB.

Noise-level distributions are registered by name in :data:`T_SAMPLERS` so a config can pick
one with a string (``t_sampler: log_uniform``) and new ones can be added without touching
callers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch

from dsm.core.validate import check_finite, check_positive_t


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


# An MSE of exactly 0 (a perfect denoiser, or a test) would give an infinite PSNR.
MSE_FLOOR = 1e-20


def psnr_of_mean_mse(mse_per_image) -> float:
    """The paper's output PSNR over a set of [0, 1] images (its Table 1): ``-10 log10(mean_i MSE_i)``
    in dB, the PSNR of the MSE averaged over images. mse_per_image: (n,) per-pixel MSEs."""
    mse = torch.as_tensor(mse_per_image, dtype=torch.float64)
    return float(t_to_psnr(mse.mean().clamp_min(MSE_FLOOR)))


def mean_psnr_per_image(mse_per_image) -> float:
    """The mean over images of each image's PSNR, ``mean_i -10 log10(MSE_i)`` in dB. By Jensen it
    is at least :func:`psnr_of_mean_mse`, more so when the per-image MSEs spread widely."""
    mse = torch.as_tensor(mse_per_image, dtype=torch.float64)
    return float(t_to_psnr(mse.clamp_min(MSE_FLOOR)).mean())


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


@register_t_sampler("importance")
class LossSecondMoment(_RangeSampler):
    """Importance sampling of log t by the loss's second moment (improved-diffusion's
    ``LossSecondMomentResampler``, for a continuous t).

    The objective stays E_{t log-uniform}[L(t)]: log t is cut into ``bins`` equal bins; bin b is
    drawn with probability p_b, proportional to sqrt(E[L^2 | b]) mixed with a uniform share,
    and t log-uniform inside it; each example carries the weight ``(1/bins) / p_b``
    (:meth:`weights`), so the weighted loss is an unbiased estimate of the same objective with
    lower variance. p stays uniform until every bin has been observed ``warmup`` times.

    The per-bin second moments are an exponential moving average (``decay`` per step) rather
    than a FIFO of recent losses: the state is a few (bins,) tensors, which are identical on
    every rank (:meth:`observe` takes an all-reduce) and saved in checkpoints
    (:meth:`state_dict`), so a resumed run samples exactly as an uninterrupted one.
    """

    adaptive = True

    def __init__(self, t_min: float, t_max: float, bins: int = 32, decay: float = 0.99,
                 uniform_fraction: float = 0.1, warmup: int = 10):
        super().__init__(t_min, t_max)
        if bins < 1 or not 0.0 <= decay < 1.0 or not 0.0 < uniform_fraction <= 1.0 or warmup < 1:
            raise ValueError(f"importance sampler: need bins >= 1, 0 <= decay < 1, 0 < uniform_fraction <= 1, "
                             f"warmup >= 1; got {bins}, {decay}, {uniform_fraction}, {warmup}")
        self.bins, self.decay, self.uniform_fraction, self.warmup = (
            int(bins), float(decay), float(uniform_fraction), int(warmup))
        self.second_moment = torch.zeros(self.bins, dtype=torch.float64)
        self.count = torch.zeros(self.bins, dtype=torch.float64)

    # -- sampling
    def probabilities(self) -> torch.Tensor:
        """(bins,) float64 bin probabilities (uniform during warm-up)."""
        uniform = torch.full((self.bins,), 1.0 / self.bins, dtype=torch.float64)
        if bool((self.count < self.warmup).any()):
            return uniform
        w = self.second_moment.clamp_min(0).sqrt()
        if not bool(torch.isfinite(w).all()) or float(w.sum()) <= 0:
            return uniform
        return (1 - self.uniform_fraction) * w / w.sum() + self.uniform_fraction * uniform

    def _bin(self, t: torch.Tensor) -> torch.Tensor:
        lo, hi = math.log(self.t_min), math.log(self.t_max)
        u = (t.detach().double().log().cpu() - lo) / (hi - lo)
        return (u * self.bins).floor().clamp(0, self.bins - 1).long()

    def __call__(self, n, generator=None, device="cpu"):
        p = self.probabilities()
        where = generator.device if generator is not None else device  # multinomial wants them together
        b = torch.multinomial(p.to(where), n, replacement=True, generator=generator).to(device)
        u = (b.double() + self._uniform(n, generator, device)) / self.bins
        lo, hi = math.log(self.t_min), math.log(self.t_max)
        return torch.exp(lo + (hi - lo) * u).float()

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) weights ``(1/bins)/p_bin(t)`` for t drawn by the last call (before :meth:`observe`)."""
        p = self.probabilities()[self._bin(t)]
        return (1.0 / (self.bins * p)).to(device=t.device, dtype=t.dtype)

    # -- adaptation
    def observe(self, t: torch.Tensor, losses: torch.Tensor, all_reduce=None) -> None:
        """Update the per-bin second moments with per-example (unweighted) ``losses`` at ``t``.

        all_reduce: optional in-place sum across ranks of a float64 tensor (DDP), so every
        rank holds the same state."""
        b = self._bin(t)
        sums = torch.zeros(2, self.bins, dtype=torch.float64)
        sums[0].index_add_(0, b, losses.detach().double().cpu().square())
        sums[1].index_add_(0, b, torch.ones_like(b, dtype=torch.float64))
        if all_reduce is not None:
            sums = all_reduce(sums)
        seen = sums[1] > 0
        first = seen & (self.count == 0)
        self.second_moment[first] = sums[0][first] / sums[1][first]
        old = seen & ~first
        self.second_moment[old] = (self.decay * self.second_moment[old]
                                   + (1 - self.decay) * (sums[0][old] / sums[1][old]))
        self.count += sums[1]

    def state_dict(self) -> dict:
        return {"second_moment": self.second_moment.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict) -> None:
        if state["second_moment"].shape != (self.bins,):
            raise ValueError(f"importance sampler state has {state['second_moment'].shape[0]} bins, "
                             f"the config {self.bins}")
        self.second_moment = state["second_moment"].double().clone()
        self.count = state["count"].double().clone()
