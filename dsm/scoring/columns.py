"""Per-image score columns (no Ray): what one row of ``dsm score``'s parquet holds.

Every random draw is seeded from the example's key (``dsm.core.seeding``), so a row is the same
whatever the batch, the actor or the order it was computed in.

Columns (units in the names; d = dimensions per image):

- ``key`` (string), ``label`` (int64, -1 when unlabeled);
- ``energy_t0``: U(x, 0) in nats;
- ``logp_nats``: log p(x) = -U(x, 0) - log Z, nats per image;
- ``nll_bpd``: bits/dim; for 8-bit images the 8-bit convention ``8 - log p / (d ln 2)`` of
  x = k/255, otherwise the plain ``-log p / (d ln 2)``;
- ``nll_bpd_dequantized`` (only when asked, 8-bit images): the same at x = (k + u)/256,
  u ~ U[0, 1) per pixel, seeded from the key;
- ``logp_db_per_dim``: 10 log10 p(x) / d;
- ``mse``: list over the t grid, E||x - D(y, t)||^2 / d per pixel (K noise draws);
- ``deff_denoising`` / ``deff_time``: lists over the t grid, d_eff by the two estimators,
  with ``deff_denoising_stderr`` / ``deff_time_stderr`` (Monte Carlo, over the K draws).
  The grid columns are absent when the t grid is empty.

The t grid (noise variances, increasing) is stored in the parquet schema metadata
(``dsm.t_grid``) and in ``scores.json`` beside the parts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from dsm.core import units
from dsm.core.deff import d_eff
from dsm.core.energy import Energy
from dsm.core.precision import check_precision, precision_scope
from dsm.core.seeding import keyed_uniform

GRID_COLUMNS = ("mse", "deff_denoising", "deff_time", "deff_denoising_stderr", "deff_time_stderr")


def parse_t_grid(text: str) -> tuple[float, ...]:
    """``"1e-4:1e2:5"`` (5 log-spaced levels) or ``"0.01,0.1,1"``; empty for no grid."""
    text = text.strip()
    if not text:
        return ()
    try:
        if ":" in text:
            lo, hi, n = text.split(":")
            lo, hi, n = float(lo), float(hi), int(n)
            if not (0 < lo < hi) or n < 1:
                raise ValueError
            grid = [lo] if n == 1 else np.logspace(math.log10(lo), math.log10(hi), n).tolist()
        else:
            grid = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"t grid {text!r}: use LO:HI:N (log-spaced, 0 < LO < HI) or a comma list of "
                         "positive noise variances") from None
    if any(not t > 0 for t in grid) or list(grid) != sorted(set(grid)):
        raise ValueError(f"t grid {text!r}: noise variances must be positive, distinct and increasing")
    return tuple(float(t) for t in grid)


@dataclass(frozen=True)
class ScoreSpec:
    """What to compute per image. Defaults are cheap; the paper used 100 levels on [1e-12, 1e3]."""

    t_grid: tuple[float, ...] = field(default_factory=lambda: parse_t_grid("1e-4:1e2:5"))
    n_noise: int = 4
    dequantize: bool = False
    batch_size: int = 64
    precision: str = "fp32"  # one of dsm.core.precision.PRECISIONS; part of a job's identity

    def __post_init__(self):
        check_precision(self.precision)
        if self.n_noise < 2:
            raise ValueError(f"noise samples K must be >= 2 (a standard error needs two), got {self.n_noise}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")


def score_batch(model: Energy, x: torch.Tensor, keys: Sequence[str], spec: ScoreSpec, *,
                eight_bit: bool) -> dict[str, np.ndarray]:
    """The score columns (see the module docstring) for clean x (B, *event_shape), computed at
    ``spec.precision`` (:func:`dsm.core.precision.precision_scope`) on x's device.

    eight_bit: x holds k/255 pixel values (the 8-bit NLL convention; dequantization allowed).
    """
    with precision_scope(spec.precision, x.device):
        return _score_batch(model, x, keys, spec, eight_bit=eight_bit)


def _score_batch(model: Energy, x: torch.Tensor, keys: Sequence[str], spec: ScoreSpec, *,
                 eight_bit: bool) -> dict[str, np.ndarray]:
    n, d = x.shape[0], model.dim
    t0 = torch.zeros(n, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        energy = model.energy(x, t0).double()
    logp = -energy - model.log_z.double()
    cols: dict[str, np.ndarray] = {
        "energy_t0": energy.cpu().numpy(),
        "logp_nats": logp.cpu().numpy(),
        "nll_bpd": (units.nll_bpd_8bit(logp, d) if eight_bit else units.bits_per_dim(logp, d)).cpu().numpy(),
        "logp_db_per_dim": units.db_per_dim(logp, d).cpu().numpy(),
    }
    if spec.dequantize:
        if not eight_bit:
            raise ValueError("dequantized NLL needs 8-bit images; this data is not 8-bit")
        k = torch.round(x * 255).to(torch.uint8)
        xd = units.dequantize(k, u=keyed_uniform(keys, tuple(x.shape[1:]), "dequantize", device=x.device)).to(x.dtype)
        with torch.no_grad():
            logp_d = -model.energy(xd, t0).double() - model.log_z.double()
        cols["nll_bpd_dequantized"] = units.nll_bpd_8bit(logp_d, d).cpu().numpy()
    grids = {c: [] for c in GRID_COLUMNS}
    for t in spec.t_grid:
        de = d_eff(model, x, t, n_noise=spec.n_noise, keys=list(keys), batch_size=spec.batch_size * spec.n_noise)
        grids["mse"].append(de.denoising * t / d)  # the denoising estimator is ||x - D||^2 / t
        grids["deff_denoising"].append(de.denoising)
        grids["deff_time"].append(de.time)
        grids["deff_denoising_stderr"].append(de.denoising_stderr)
        grids["deff_time_stderr"].append(de.time_stderr)
    if spec.t_grid:  # an empty grid writes no grid columns
        for c, vals in grids.items():
            cols[c] = torch.stack(vals, 1).double().cpu().numpy()
    return cols
