"""The notebook API: load an exported model, then compute on tensors.

    import dsm.api
    m = dsm.api.load("dsm-runs/runs/<name>/model.pt")
    m.log_prob(x)            # nats per image, (B,)
    m.nll(x)                 # bits/dim (8-bit convention for 8-bit image models, plain otherwise)
    m.d_eff(x, t=0.01)       # both estimators, with standard errors
    m.denoise(y, t)          # E[x | y] under the model

x is (B, *shape) with the data's shape: (B, C, H, W) in [0, 1] for images, (B, d) for
vectors. The same object serves ``dsm score``'s actors, so notebook numbers equal the
parquet's.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from dsm.core import units
from dsm.core.deff import DEff, d_eff
from dsm.core.energy import Energy, as_input


def _per_example(t: torch.Tensor | float, y: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) noise variance as (B,), on y's device and dtype."""
    t = torch.as_tensor(t, dtype=y.dtype, device=y.device)
    return t.expand(y.shape[0]) if t.ndim == 0 else t.to(y)


# [t_min, t_max] assumed for an energy that comes without a training config (dsm.core.toy's exact ones)
DEFAULT_T_RANGE = (1e-4, 1e3)


class NotNormalized(ValueError):
    """The model has no log Z yet."""


class Model:
    """An energy with its data shape. ``shape``: the data's event shape (the model may see it flattened)."""

    def __init__(self, energy: Energy, shape: tuple[int, ...], *, eight_bit: bool, normalized: bool,
                 source: str = "", meta: dict | None = None, t_range: tuple[float, float] = DEFAULT_T_RANGE):
        self.energy_model = energy.eval()
        self.shape = tuple(shape)
        self.eight_bit = eight_bit
        self.normalized = normalized
        self.source = source
        self.meta = dict(meta or {})
        self.t_range = (float(t_range[0]), float(t_range[1]))  # noise variances it was trained on

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def log_z(self) -> float:
        return float(self.energy_model.log_z)

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """x in the data's shape -> the model's input shape (flattened for a vector model)."""
        return as_input(self.energy_model, x, self.shape)

    def require_normalized(self) -> None:
        """Raise :class:`NotNormalized`, saying which command sets log Z, unless it is set."""
        if not self.normalized:
            raise NotNormalized(f"{self.source or 'the model'} is not normalized (no log Z): run "
                                f"`dsm normalize {shlex.quote(self.source) if self.source else 'MODEL'} "
                                "--data HELD_OUT` first")

    def energy(self, y: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """U(y, t) in nats, (B,)."""
        y = self.to_model(y)
        with torch.no_grad():
            return self.energy_model.energy(y, _per_example(t, y))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized log p(x) = -U(x, 0) - log Z in nats, (B,) float64."""
        self.require_normalized()
        return self.energy_model.log_prob(self.to_model(x))

    def nll(self, x: torch.Tensor, convention: str | None = None) -> torch.Tensor:
        """NLL in bits/dim: ``8bit`` (default for 8-bit image models) or ``plain``."""
        convention = convention or ("8bit" if self.eight_bit else "plain")
        logp = self.log_prob(x)
        if convention == "8bit":
            return units.nll_bpd_8bit(logp, self.dim)
        if convention == "plain":
            return units.bits_per_dim(logp, self.dim)
        raise ValueError(f"convention must be '8bit' or 'plain', got {convention!r}")

    def d_eff(self, x: torch.Tensor, t: float, n_noise: int = 8, keys: Sequence | None = None) -> DEff:
        """d_eff(x, t) by both estimators (noise seeded per key; default keys: row indices)."""
        return d_eff(self.energy_model, self.to_model(x), t, n_noise=n_noise, keys=keys)

    def denoise(self, y: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """D(y, t) = y - t grad_y U, in the data's shape."""
        yin = self.to_model(y)
        return self.energy_model.denoise(yin, _per_example(t, yin)).detach().reshape(y.shape)


def load(path: str | Path, device: str | torch.device = "cpu") -> Model:
    """An exported model (``dsm train``'s ``model.pt``). Errors name the file."""
    from dsm.core.bundle import load_model

    return from_bundle(load_model(path, map_location=device), path)


def from_bundle(b, path: str | Path) -> Model:
    """The :class:`Model` of a model file already read (``dsm.core.bundle.load_model(path)``)."""
    if not isinstance(b.model, Energy):
        raise ValueError(f"{path}: a score-network baseline has no energy, so no log p; score an energy model")
    return Model(b.model, b.shape, eight_bit=b.eight_bit, normalized=b.normalization is not None,
                 source=str(path), meta={**b.meta, "normalization": b.normalization}, t_range=b.t_range)


def from_energy(energy: Energy, *, eight_bit: bool = False, normalized: bool = True) -> Model:
    """Wrap any :class:`Energy` (an exact density from ``dsm.core.toy``, say) like a loaded model."""
    return Model(energy, tuple(energy.event_shape), eight_bit=eight_bit, normalized=normalized,
                 source=type(energy).__name__)


ModelRef = str | Path | Callable[[], Model]


def resolve(ref: ModelRef, device: str | torch.device = "cpu") -> Model:
    """A path to a bundle, or a zero-argument callable returning a :class:`Model` (picklable, for actors)."""
    return ref() if callable(ref) else load(ref, device)
