"""Input checks shared by the math core: clear errors that name the problem."""

from __future__ import annotations

import torch


class NonFiniteError(ValueError):
    """A tensor that must be finite holds NaN or Inf."""


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise :class:`NonFiniteError` naming ``name`` and the count if ``x`` has NaN/Inf."""
    if not torch.isfinite(x).all():
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise NonFiniteError(f"{name} contains {n_nan} NaN and {n_inf} Inf values")


def check_positive_t(t: torch.Tensor, allow_zero: bool = False) -> None:
    """Noise variances must be > 0 (or >= 0 where ``allow_zero``: the clean limit t = 0)."""
    bad = (t < 0) if allow_zero else (t <= 0)
    if bad.any():
        worst = float(t[bad].min())
        need = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"noise variance t must be {need}; got {int(bad.sum())} value(s), e.g. t={worst:g}")


def check_batch(y: torch.Tensor, event_shape: tuple[int, ...], name: str = "y") -> None:
    """``y`` must be (B, *event_shape)."""
    if tuple(y.shape[1:]) != tuple(event_shape) or y.ndim != len(event_shape) + 1:
        raise ValueError(
            f"{name} must have shape (B, {', '.join(map(str, event_shape))}), got {tuple(y.shape)}"
        )
