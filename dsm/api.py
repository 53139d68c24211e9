"""The notebook API: load a model, then compute on tensors or arrays.

    import dsm.api
    m = dsm.api.load("dsm-runs/runs/<name>/model-best.pt")  # or s3://..., models:/NAME/VERSION
    m.log_prob(x)            # nats per image, (B,) float64
    m.nll(x)                 # bits/dim, in the model's convention (see CONVENTIONS)
    m.d_eff(x, t=0.01)       # both estimators, with standard errors
    m.denoise(y, t)          # E[x | y] under the model
    m.normalize("data/digits/test")  # sets log Z from held-out data; returns it with its stderr

x is (B, *shape) with the data's shape: (B, C, H, W) images, (B, d) vectors, as a torch tensor or
a NumPy array. uint8 images are pixel values k, read as k/255 exactly as in training; float images
are in [0, 1]. Every method evaluates ``batch_size`` rows at a time. The same object serves ``dsm
score``'s actors, so notebook numbers equal the parquet's.
"""

from __future__ import annotations

import math
import shlex
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from dsm.core import units
from dsm.core.deff import DEff, d_eff
from dsm.core.energy import Energy, as_input
from dsm.core.normalize import LogZ
from dsm.core.seeding import default_keys, keyed_uniform

__all__ = ["CONVENTIONS", "DEFAULT_T_RANGE", "Model", "ModelRef", "NotNormalized", "from_bundle", "from_energy",
           "load", "resolve"]

# The NLL conventions, by the names that scoring's columns and the docs use (dsm.core.units)
CONVENTIONS = units.CONVENTIONS
# A float input to a model of 8-bit images beyond these is taken for 0..255 values, not [0, 1]
EIGHT_BIT_FLOAT_RANGE = (-0.5, 1.5)
BATCH_SIZE = 256


def _per_example(t: torch.Tensor | float, y: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) noise variance as (B,), on y's device and dtype."""
    t = torch.as_tensor(t, dtype=y.dtype, device=y.device)
    return t.expand(y.shape[0]) if t.ndim == 0 else t.to(y)


def _in_batches(fn: Callable[..., torch.Tensor], batch_size: int, *rows: torch.Tensor) -> torch.Tensor:
    """``fn`` on ``batch_size`` rows of each of ``rows`` at a time, the results concatenated."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = rows[0].shape[0]
    return torch.cat([fn(*(r[i:i + batch_size] for r in rows)) for i in range(0, max(n, 1), batch_size)])


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

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.energy_model.parameters())
        log_z = f"{self.log_z:.4f} nats" if self.normalized else "not normalized"
        return (f"Model({type(self.energy_model).__name__}, shape={self.shape}, {n:,} parameters, "
                f"log Z {log_z}, t in [{self.t_range[0]:g}, {self.t_range[1]:g}], "
                f"{'8-bit images' if self.eight_bit else 'float data'}, source={self.source!r})")

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def log_z(self) -> float:
        return float(self.energy_model.log_z)

    @property
    def device(self) -> torch.device:
        return self.energy_model.log_z.device

    def data(self, x, *, clean: bool = True) -> torch.Tensor:
        """x (B, *shape), a tensor or a NumPy array, as the model's float input on its device.

        uint8 is read as k/255 (a model of 8-bit images only). clean: x is data, not a noisy y, so
        for a model of 8-bit images floats far outside [0, 1] (0..255 values, say) are refused."""
        x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x has shape {tuple(x.shape)}; this model takes (B, {', '.join(map(str, self.shape))})")
        if x.dtype == torch.uint8 and not self.eight_bit:
            raise ValueError("x is uint8, but this model was trained on float data: pass floats as in training")
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise ValueError(f"x has dtype {x.dtype}: pass uint8 pixel values or floats in [0, 1]")
        if clean and self.eight_bit and x.is_floating_point() and x.numel():
            lo, hi = float(x.min()), float(x.max())
            if lo < EIGHT_BIT_FLOAT_RANGE[0] or hi > EIGHT_BIT_FLOAT_RANGE[1]:
                raise ValueError(f"x holds values in [{lo:g}, {hi:g}], but this model reads 8-bit images as "
                                 "floats in [0, 1]: pass the uint8 pixel values (read as k/255) or divide by 255")
        x = units.to_unit_float(x, self.device) if x.dtype == torch.uint8 else x.to(self.device)
        weight = next(self.energy_model.parameters(), None)  # an exact density has none: any float
        return x.to(weight.dtype) if weight is not None else x

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """x in the data's shape -> the model's input shape (flattened for a vector model)."""
        return as_input(self.energy_model, x, self.shape)

    def require_normalized(self) -> None:
        """Raise :class:`NotNormalized`, saying how to set log Z, unless it is set."""
        if not self.normalized:
            where = shlex.quote(self.source) if self.source else "MODEL"
            raise NotNormalized(f"{self.source or 'the model'} is not normalized (no log Z): call "
                                f"model.normalize(held_out_data), or run `dsm normalize {where} --data HELD_OUT`")

    def energy(self, y, t: torch.Tensor | float, *, batch_size: int = BATCH_SIZE) -> torch.Tensor:
        """U(y, t) in nats, (B,), for noisy y (B, *shape) at noise variance t (a scalar or (B,))."""
        y = self.to_model(self.data(y, clean=False))
        t = _per_example(t, y)
        with torch.no_grad():
            return _in_batches(self.energy_model.energy, batch_size, y, t)

    def log_prob(self, x, *, batch_size: int = BATCH_SIZE) -> torch.Tensor:
        """Normalized log p(x) = -U(x, 0) - log Z in nats, (B,) float64."""
        self.require_normalized()
        return self._log_prob(self.to_model(self.data(x)), batch_size)

    def _log_prob(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        with torch.no_grad():
            return _in_batches(self.energy_model.log_prob, batch_size, x)

    def nll(self, x, convention: str | None = None, *, keys: Sequence | None = None,
            batch_size: int = BATCH_SIZE) -> torch.Tensor:
        """NLL in bits/dim, (B,) float64, in one of :data:`CONVENTIONS`.

        Default: ``continuous`` for a model of 8-bit images, ``plain`` otherwise. ``dequantized``
        takes the uint8 pixel values and draws the uniform noise from ``keys`` (default: row
        indices), as ``dsm score --dequantize`` does for the same keys."""
        convention = self._convention(convention)
        if convention == "dequantized":
            return self._dequantized_nll(x, keys, batch_size)
        logp = self.log_prob(x, batch_size=batch_size)
        return units.nll_bpd_8bit(logp, self.dim) if convention == "continuous" else units.bits_per_dim(logp, self.dim)

    def _convention(self, convention: str | None) -> str:
        if convention == "8bit":  # the name before the conventions were named alike everywhere
            warnings.warn("nll(convention='8bit') is now 'continuous'; '8bit' will stop working",
                          DeprecationWarning, stacklevel=3)
            convention = "continuous"
        convention = convention or ("continuous" if self.eight_bit else "plain")
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}; got {convention!r}")
        if convention != "plain" and not self.eight_bit:
            raise ValueError(f"the {convention!r} convention is for 8-bit images; this model's data is not 8-bit")
        return convention

    def _dequantized_nll(self, x, keys: Sequence | None, batch_size: int) -> torch.Tensor:
        k = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        if k.dtype != torch.uint8:
            raise ValueError("the 'dequantized' convention needs the uint8 pixel values k, not floats")
        keys = list(keys) if keys is not None else default_keys(k.shape[0])
        u = keyed_uniform(keys, self.shape, "dequantize", device=self.device)
        xd = units.dequantize(k.to(self.device), u=u)
        self.require_normalized()
        return units.nll_bpd_8bit(self._log_prob(self.to_model(self.data(xd)), batch_size), self.dim)

    def d_eff(self, x, t: float, n_noise: int = 8, keys: Sequence | None = None, *,
              batch_size: int = BATCH_SIZE) -> DEff:
        """d_eff(x, t) by both estimators (noise seeded per key; default keys: row indices)."""
        return d_eff(self.energy_model, self.to_model(self.data(x)), t, n_noise=n_noise, keys=keys,
                     batch_size=batch_size)

    def denoise(self, y, t: torch.Tensor | float, *, batch_size: int = BATCH_SIZE) -> torch.Tensor:
        """D(y, t) = y - t grad_y U, in the data's shape, for noisy y at noise variance t."""
        y = self.data(y, clean=False)
        yin = self.to_model(y)
        denoised = _in_batches(lambda yb, tb: self.energy_model.denoise(yb, tb).detach(), batch_size, yin,
                               _per_example(t, yin))
        return denoised.reshape(y.shape)

    def normalize(self, data, *, samples: int = 2000, t: float | None = None, keys: Sequence | None = None,
                  batch_size: int = BATCH_SIZE, precision: str = "fp32") -> LogZ:
        """Estimate log Z on held-out data and set it, as ``dsm normalize`` does (which also stores it
        in the file): ``data`` is a path (shards, a .npy, an image folder; its first ``samples``
        examples) or a tensor/array of examples (noise seeded from ``keys``, default row indices).
        t: the noise variance of the estimate, default the training t_max. Returns log Z in nats
        with its standard error; the full record (the agreement across t) is in ``meta``."""
        from dsm.scoring.normalization import normalization_record, read_held_out

        if isinstance(data, str | Path):
            keys, x, where = read_held_out(data, self.shape, samples)
        else:
            x, where = self.data(data), "an array"
            keys = list(keys) if keys is not None else default_keys(x.shape[0])
        record = normalization_record(self.energy_model, self.shape, x, keys, t=float(t or self.t_range[1]),
                                      batch_size=batch_size, precision=precision, device=str(self.device))
        self.normalized = True
        self.meta["normalization"] = {**record, "data": str(where)}
        return LogZ(record["value"], record["stderr"], record["t"], record["n"], record["method"])


def load(ref: str | Path, *, tracking_uri: str | None = None, device: str | torch.device = "cpu") -> Model:
    """A model file: a local path, a URL (``s3://``, ``gs://``, ``https://`` ...) or a registered
    version, ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``, in the MLflow at ``tracking_uri``
    (default: the local workspace's, as ``dsm score`` uses). Errors name the file."""
    from dsm.core.bundle import load_model
    from dsm.plumbing.store import Location, is_remote, redact
    from dsm.runtime.mlmodel import is_model_uri

    if not (is_model_uri(ref) or is_remote(ref)):
        return from_bundle(load_model(ref, map_location=device), ref)
    with tempfile.TemporaryDirectory(prefix="dsm-load-") as tmp:
        if is_model_uri(ref):
            local = _registered_file(str(ref), tracking_uri, Path(tmp))
        else:
            local = Path(tmp) / Location.of(ref).name
            local.write_bytes(Location.of(ref).read_bytes())
        try:
            b = load_model(local, map_location=device)
        except (ValueError, FileNotFoundError) as e:  # the error names the temporary copy
            raise ValueError(str(e).replace(str(local), redact(str(ref)))) from None
    return from_bundle(b, redact(str(ref)))


def _registered_file(uri: str, tracking_uri: str | None, folder: Path) -> Path:
    from mlflow.tracking import MlflowClient

    from dsm.runtime.mlmodel import fetch_bundle
    from dsm.runtime.tracking import tracking_uri as workspace_tracking_uri

    return fetch_bundle(MlflowClient(tracking_uri or workspace_tracking_uri(None)), uri, folder)[0]


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
    """A model reference (as :func:`load` takes), or a zero-argument callable returning a
    :class:`Model` (picklable, for actors)."""
    return ref() if callable(ref) else load(ref, device=device)
