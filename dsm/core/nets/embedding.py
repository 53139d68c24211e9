"""Noise-level embeddings: t (B,) -> features (B, n_features).

dsm's two embeddings (``log``, ``linear``) floor t at ``t_min`` so that the network is
*defined* at t = 0 and below the training range (docs/design.md section 2: a network evaluated
far outside its training range, e.g. log t at t = 1e-12, returns garbage). Below ``t_min``
the features, and hence any time dependence through them, are frozen at their ``t_min``
values. The ``official`` embedding is the paper's code's, unfloored: it is bounded and
smooth at t = 0 anyway (cos and sin of t itself).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LogTimeEmbedding(nn.Module):
    """Fourier features of ``u = log t`` rescaled to [-1, 1] over [t_min, t_max].

    Features: ``[u, sin(pi k u / 2), cos(pi k u / 2)]`` for k = 1..n_freq.
    """

    def __init__(self, t_min: float, t_max: float, n_freq: int = 8):
        super().__init__()
        if not 0 < t_min < t_max:
            raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.lo, self.hi = math.log(t_min), math.log(t_max)
        self.register_buffer("freqs", 0.5 * math.pi * torch.arange(1, n_freq + 1, dtype=torch.float32))
        self.n_features = 1 + 2 * n_freq

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        u = 2 * (torch.log(t.clamp_min(self.t_min)) - self.lo) / (self.hi - self.lo) - 1
        a = u[:, None] * self.freqs
        return torch.cat([u[:, None].to(a.dtype), a.sin(), a.cos()], dim=1)


class LinearTimeEmbedding(nn.Module):
    """The paper's embedding of t itself: ``sin/cos(w_k t)``, w log-spaced from 1 to 1/100.

    Nearly blind to t below about 1e-3 (docs/design.md section 3); kept to reproduce the paper
    and to measure against :class:`LogTimeEmbedding`.
    """

    def __init__(self, t_min: float, t_max: float, n_freq: int = 32):
        super().__init__()
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.register_buffer("freqs", torch.logspace(0, -2, n_freq))
        self.n_features = 2 * n_freq

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        a = t.clamp_min(self.t_min)[:, None] * self.freqs
        return torch.cat([a.sin(), a.cos()], dim=1)


class OfficialTimeEmbedding(nn.Module):
    """The paper's code's embedding of t itself: ``[cos(t f), sin(t f)]``, no floor.

    ``f = exp(-linspace(log 1, log 100, n_freq))`` in float32: the official defaults
    t_min = 1 and t_max = 100 of the embedding, which the released models keep
    (``embed_noise_level_in_range: false``), whatever the training range of t. The training
    range arguments are therefore ignored. The frequencies are recomputed, not stored, so a
    state dict carries no copy of them.
    """

    LOW, HIGH = 1.0, 100.0

    def __init__(self, t_min: float, t_max: float, n_freq: int = 32):
        super().__init__()
        freqs = torch.exp(-torch.linspace(math.log(self.LOW), math.log(self.HIGH), n_freq, dtype=torch.float32))
        self.register_buffer("freqs", freqs, persistent=False)
        self.n_features = 2 * n_freq

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        a = t[:, None] * self.freqs
        return torch.cat([a.cos(), a.sin()], dim=1)


TIME_EMBEDDINGS = {"log": LogTimeEmbedding, "linear": LinearTimeEmbedding, "official": OfficialTimeEmbedding}


def make_time_embedding(kind: str, t_min: float, t_max: float, n_freq: int | None = None) -> nn.Module:
    """Build a registered embedding by name (``log``, ``linear`` or ``official``)."""
    if kind not in TIME_EMBEDDINGS:
        raise ValueError(f"unknown time embedding {kind!r}; known: {sorted(TIME_EMBEDDINGS)}")
    kwargs = {} if n_freq is None else {"n_freq": n_freq}
    return TIME_EMBEDDINGS[kind](t_min, t_max, **kwargs)
