"""Unit conversions for log-probabilities, in one place.

log p is in nats per image unless a name says otherwise; d is the number of dimensions.

- nats/dim  = log p / d
- bits/dim  = -log p / (d ln 2)            (an NLL: lower is better)
- dB/dim    = 10 log10(p) / d = 10 log p / (d ln 10)
- 8-bit NLL = 8 - log p / (d ln 2)         for densities on [0, 1]^d of 8-bit images: the
  density on [0, 256)^d is p / 256^d. This is the paper's "continuous, estimate" convention
  (it treats [0, 1] as 256 levels; with x = k/255 the exact offset would be log2(255)).
  Evaluated at dequantized points x = (k + u)/256, u ~ U[0, 1)^d, it is instead an upper
  bound on the discrete NLL (the "dequantized" convention).

Every reported NLL names its convention with one of :data:`CONVENTIONS`.
"""

from __future__ import annotations

import functools
import math

import torch

LN2 = math.log(2.0)
LN10 = math.log(10.0)
BITS_PER_PIXEL = 8

CONVENTIONS = {
    "continuous": "8 - log p(x)/(d ln 2) with x = k/255 in [0,1] (paper's continuous estimate)",
    "dequantized": "8 - E_u log p((k+u)/256)/(d ln 2), u ~ U[0,1)^d (bound on the discrete NLL)",
    "plain": "-log p(x)/(d ln 2) (non-image data)",
}


def nats_per_dim(logp, d: int):
    return logp / d


def bits_per_dim(logp, d: int):
    """NLL in bits/dim of a log-density in nats (the 'plain' convention)."""
    return -logp / (d * LN2)


def logp_from_bits_per_dim(bpd, d: int):
    return -bpd * d * LN2


def db_per_dim(logp, d: int):
    """log p in dB/dim: 10 log10(p) / d."""
    return 10 * logp / (d * LN10)


def logp_from_db_per_dim(db, d: int):
    return db * d * LN10 / 10


def nll_bpd_8bit(logp, d: int):
    """8-bit NLL in bits/dim of a density on [0, 1]^d: ``8 - log p / (d ln 2)``."""
    return BITS_PER_PIXEL + bits_per_dim(logp, d)


def logp_from_nll_bpd_8bit(bpd, d: int):
    return logp_from_bits_per_dim(bpd - BITS_PER_PIXEL, d)


def dequantize(k: torch.Tensor, generator: torch.Generator | None = None,
               u: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform dequantization of 8-bit values: ``(k + u) / 256`` with ``u ~ U[0, 1)``, float32."""
    if k.dtype != torch.uint8:
        raise ValueError(f"dequantize expects uint8 pixel values, got {k.dtype}")
    if u is None:
        u = torch.rand(k.shape, generator=generator).to(k.device)  # a CPU generator's draws, on k's device
    return (k.float() + u) / 256.0


# k/255 for k = 0..255, computed once on the CPU with the division the loader used to do, so that
# a lookup on any other device gives the same bits (CUDA divides by a scalar as a multiplication
# by its reciprocal, which can differ from k/255 in the last bit).
_UNIT = torch.arange(256, dtype=torch.float32).div_(255.0)


@functools.lru_cache(maxsize=8)
def _unit_table(device: torch.device) -> torch.Tensor:
    return _UNIT.to(device)


def to_unit_float(x: torch.Tensor, device: str | torch.device | None = None) -> torch.Tensor:
    """Data ``x`` as the model's input, on ``device`` (default: where ``x`` is).

    uint8 pixel values k (any shape) become float32 k/255 in [0, 1], converted after the copy to
    ``device`` (a quarter of the bytes of float32 cross to it; non-blocking from pinned memory);
    float data (vectors, float .npy) becomes float32. The one place the 8-bit conversion is done:
    training, held-out evaluation, scoring's reader, the notebook API and benchmarks."""
    device = torch.device(device) if device is not None else x.device
    x = x.to(device, non_blocking=True)
    if x.dtype != torch.uint8:
        return x.float()
    if device.type == "cpu":
        return x.float().div_(255.0)  # the table's own computation, and faster than a lookup on a CPU
    return _unit_table(device).index_select(0, x.flatten().int()).view(x.shape)
