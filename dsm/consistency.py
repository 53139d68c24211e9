"""Self-consistency of an energy U(y, t): does it describe one density flowing under the heat equation?

A trained energy can disagree with itself even where every loss term looks small: Z can drift
with t, ``-U`` and the probability-flow ODE can give different log p, and U can violate the
heat equation that every family ``p(., t) = p_0 * N(0, t I)`` obeys. This module measures
those disagreements on held-out data, on any :class:`dsm.energy.Energy` (the exact densities of
:mod:`dsm.toy` score zero on all of them). No Ray, no MLflow: ``dsm train``'s evaluation and
``dsm score`` both call :func:`check` and compare its :meth:`Consistency.metrics` against the
same :data:`BOUNDS`.

The four checks (nats; d = dimensions per example):

log Z spread
    Paired log Z (:func:`dsm.normalize.log_z_agreement`, the same data and z at every t) at
    several large t. Z of an exact family is constant in t; the spread max - min is how much
    mass the model creates or destroys between them.
ODE gap
    ``-U(x, t0)`` against ``log p(x, t0)`` from the PF-ODE (:func:`dsm.ode.ode_log_prob`, which
    uses only grad_y U), per image, in nats/dim. The ODE's endpoint density at T is the model's
    *own* unnormalized ``-U(y_T, T)``, not the Gaussian prior, so log Z cancels from both sides:
    the gap is ``int_t0^T R(y(t), t) dt`` along the ODE path exactly (up to Heun's error), R the
    heat residual below, and it does not move when log Z is wrong. (With the normalized energy
    and the Gaussian prior, as in ``benchmarks/score_vs_ode.py``, the gap also carries the
    log Z estimate's error and the Gaussian-limit error at T, per image.)
heat residual
    ``R = dU/dt - 1/2 Laplacian U + 1/2 ||grad U||^2`` (:func:`dsm.losses.heat_residual`), zero
    for every exact family whatever log Z. Reported as the root mean square of ``t R / d``
    (nats/dim per unit of log t: ``int R dt = int t R d(log t)``) per band of log t, at
    ``y = x + sqrt(t) z`` with t and z seeded by the example key.
near-Gaussian limit
    ``t Laplacian U / d`` at the largest log Z t, against the data's Gaussian limit
    ``mean_i t / (var_i + t)``: the paired log Z estimator assumes U is that Gaussian's energy
    up to a constant there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from dsm.energy import Energy
from dsm.losses import heat_residual
from dsm.normalize import DataMoments, log_z_agreement
from dsm.ode import laplacian, ode_log_prob
from dsm.seeding import key_seed, keyed_normal, keyed_rademacher, keyed_uniform

PREFIX = "consistency/"

# The noise variances of the log Z spread (issue #16: log Z = 140.17, 141.35, 142.40 there).
LOG_Z_TS: tuple[float, ...] = (100.0, 333.0, 1000.0)

# Bounds (issue #16's targets). Each is a limit on the absolute value of one metric.
LOG_Z_SPREAD_MAX_NATS = 0.1  # max - min of log Z over LOG_Z_TS
ODE_GAP_ABS_MAX_NATS_PER_DIM = 0.05  # mean |energy - ODE| log p
# The heat residual integrates to the ODE gap (int R dt = int t R d log t): a residual of one
# sign and this RMS across the shipped configs' training range [1e-4, 1e3] (16.1 units of
# log t) would integrate to exactly the ODE-gap bound, 0.05 / 16.1 = 0.0031 nats/dim.
HEAT_RESIDUAL_RMS_MAX_NATS_PER_DIM = ODE_GAP_ABS_MAX_NATS_PER_DIM / math.log(1e3 / 1e-4)
# The ">= 0.997" for t Laplacian U / d, as a distance from the data's Gaussian limit
# (which is 1 - mean var / t, within 1e-4 of 1 for images at t = 1e3).
NEAR_GAUSSIAN_DEVIATION_MAX = 0.003

# Exact Laplacians (d Hessian-vector products) up to this d, Hutchinson above. At d = 64 (the
# 8x8 digits of the smoke run) the exact trace costs 65 backward passes per ODE evaluation,
# affordable on 4 images, and leaves no probe noise; the 16x16 patches (d = 256) and larger
# would pay 4x more per image for it, while Hutchinson's relative error shrinks as d grows.
EXACT_LAPLACIAN_MAX_DIM = 64


@dataclass(frozen=True)
class Bound:
    """``|metric| <= limit``; ``what`` says in words what is bounded (for the warning line)."""

    metric: str
    limit: float
    what: str


def _bounds(bands: int) -> list[Bound]:
    out = [Bound(PREFIX + "log_z_spread_nats", LOG_Z_SPREAD_MAX_NATS, "max - min of log Z over large t"),
           Bound(PREFIX + "ode_gap_abs_nats_per_dim", ODE_GAP_ABS_MAX_NATS_PER_DIM, "mean |energy - PF-ODE log p|"),
           Bound(PREFIX + "near_gaussian_deviation", NEAR_GAUSSIAN_DEVIATION_MAX,
                 "t Laplacian U / d minus its Gaussian limit")]
    return out + [Bound(PREFIX + f"heat_residual_rms_nats_per_dim_band{i}", HEAT_RESIDUAL_RMS_MAX_NATS_PER_DIM,
                        f"RMS of t R / d in noise band {i}") for i in range(bands)]


@dataclass(frozen=True)
class Options:
    """What :func:`check` measures; the defaults keep the smoke run's evaluation cheap."""

    log_z_ts: tuple[float, ...] = LOG_Z_TS
    ode_images: int = 4  # 0 skips the ODE gap
    ode_steps: int = 24  # Heun steps, uniform in log t
    heat_examples: int = 32  # per band; 0 skips the heat residual
    hutchinson_probes: int = 4  # above EXACT_LAPLACIAN_MAX_DIM; even: two halves for an unbiased square
    exact_max_dim: int = EXACT_LAPLACIAN_MAX_DIM

    def __post_init__(self):
        if len(self.log_z_ts) < 2 or not all(t > 0 for t in self.log_z_ts):
            raise ValueError(f"log_z_ts needs at least two noise variances > 0, got {list(self.log_z_ts)}")
        if self.hutchinson_probes < 2 or self.hutchinson_probes % 2:
            raise ValueError(f"hutchinson_probes must be even and >= 2, got {self.hutchinson_probes}")
        if self.ode_images < 0 or self.heat_examples < 0 or self.ode_steps < 1:
            raise ValueError("ode_images and heat_examples must be >= 0 and ode_steps >= 1")


@dataclass(frozen=True)
class OdeGap:
    """Per image (B,) float64: ``gap`` = energy - ODE log p at t0 in nats/dim, and its
    Hutchinson standard error (zeros with the exact Laplacian)."""

    gap: torch.Tensor
    stderr: torch.Tensor
    exact: bool

    @property
    def mean(self) -> float:
        return float(self.gap.mean())

    @property
    def mean_stderr(self) -> float:
        """Of the mean over images: the image-to-image spread plus the probe noise, or the
        probe noise alone for a single image."""
        n = len(self.gap)
        return float(self.gap.std() / math.sqrt(n)) if n > 1 else float(self.stderr.norm())

    @property
    def mean_abs(self) -> float:
        return float(self.gap.abs().mean())


@dataclass(frozen=True)
class HeatBand:
    """The heat residual in one band [t_lo, t_hi] of t: ``mean_square`` of t R / d ((nats/dim)^2,
    unbiased, so possibly slightly negative under probe noise) and its standard error."""

    t_lo: float
    t_hi: float
    mean_square: float
    mean_square_stderr: float

    @property
    def rms(self) -> float:
        """sqrt(max(mean_square, 0)), nats/dim."""
        return math.sqrt(max(self.mean_square, 0.0))

    @property
    def rms_stderr(self) -> float:
        """By the delta method, se / (2 rms), floored at sqrt(se) / 2 where the RMS is unresolved."""
        se = self.mean_square_stderr
        return se / (2 * max(self.rms, math.sqrt(se))) if se > 0 else 0.0


@dataclass(frozen=True)
class NearGaussian:
    """``t Laplacian U / d`` at t (mean over examples, with its standard error) and the data's
    Gaussian limit ``mean_i t / (var_i + t)``."""

    t: float
    value: float
    stderr: float
    expected: float

    @property
    def deviation(self) -> float:
        return self.value - self.expected


@dataclass
class Consistency:
    """Everything :func:`check` measured; ``None`` for a check that was skipped."""

    log_z: object  # dsm.normalize.LogZAgreement
    ode: OdeGap | None
    heat: list[HeatBand] = field(default_factory=list)
    near_gaussian: NearGaussian | None = None

    def metrics(self) -> dict[str, float]:
        """Flat metrics named ``consistency/...`` with units in the name (see :func:`metric_names`)."""
        m = {PREFIX + "log_z_spread_nats": self.log_z.max_abs_diff, PREFIX + "log_z_chi2": self.log_z.chi2}
        for e in self.log_z.estimates:
            m[PREFIX + f"log_z_nats_t{e.t:g}"] = e.value
            m[PREFIX + f"log_z_stderr_nats_t{e.t:g}"] = e.stderr
        if self.ode is not None:
            m.update({PREFIX + "ode_gap_nats_per_dim": self.ode.mean,
                      PREFIX + "ode_gap_stderr_nats_per_dim": self.ode.mean_stderr,
                      PREFIX + "ode_gap_abs_nats_per_dim": self.ode.mean_abs})
        for i, b in enumerate(self.heat):
            m[PREFIX + f"heat_residual_rms_nats_per_dim_band{i}"] = b.rms
            m[PREFIX + f"heat_residual_rms_stderr_nats_per_dim_band{i}"] = b.rms_stderr
        if self.near_gaussian is not None:
            g = self.near_gaussian
            m.update({PREFIX + "near_gaussian_t_lap_per_dim": g.value,
                      PREFIX + "near_gaussian_t_lap_per_dim_stderr": g.stderr,
                      PREFIX + "near_gaussian_deviation": g.deviation})
        return m


def metric_names(options: Options = Options(), bands: int = 4) -> set[str]:
    """The keys of :meth:`Consistency.metrics` for these options and ``bands`` heat bands."""
    names = {PREFIX + "log_z_spread_nats", PREFIX + "log_z_chi2"}
    names |= {PREFIX + f"log_z{s}_nats_t{t:g}" for t in options.log_z_ts for s in ("", "_stderr")}
    if options.ode_images:
        names |= {PREFIX + f"ode_gap{s}_nats_per_dim" for s in ("", "_stderr", "_abs")}
    if options.heat_examples:
        names |= {PREFIX + f"heat_residual_rms{s}_nats_per_dim_band{i}" for i in range(bands) for s in ("", "_stderr")}
    names |= {PREFIX + "near_gaussian_t_lap_per_dim", PREFIX + "near_gaussian_t_lap_per_dim_stderr",
              PREFIX + "near_gaussian_deviation"}
    return names


def out_of_bounds(metrics: dict[str, float], bands: int = 4) -> list[str]:
    """One warning line per bounded metric of ``metrics`` beyond its bound (absent ones are skipped)."""
    lines = []
    for b in _bounds(bands):
        v = metrics.get(b.metric)
        if v is not None and not abs(v) <= b.limit:  # NaN counts as out of bounds
            lines.append(f"WARNING: {b.metric} = {v:.4g} is beyond its bound {b.limit:.4g} ({b.what}; docs/scoring.md)")
    return lines


# -- the checks ----------------------------------------------------------------------------

def _probes(model: Energy, options: Options) -> int | None:
    """None (exact Laplacian) for small d, else the number of Hutchinson probes."""
    return None if model.dim <= options.exact_max_dim else options.hutchinson_probes


class _OwnEndpoint:
    """Stands in for :func:`ode_log_prob`'s Gaussian prior: the model's own unnormalized
    ``log p(y, T) = -U(y, T)``, so that log Z cancels from the gap (module docstring)."""

    def __init__(self, model: Energy):
        self.model = model

    def log_q(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return -self.model.energy(y, t.to(y.dtype)).double()


def ode_gap(model: Energy, x: torch.Tensor, keys: Sequence, *, t_start: float, t_end: float, steps: int,
            probes: int | None) -> OdeGap:
    """Energy minus PF-ODE log p at ``t_start`` for each x (B, *event_shape), in nats/dim.

    probes: None for the exact Laplacian, else Hutchinson probes seeded by key."""
    trace = "exact" if probes is None else "hutchinson"
    res = ode_log_prob(model, x, prior=_OwnEndpoint(model), t_start=t_start, t_end=t_end, steps=steps,
                       trace=trace, n_probes=probes or 2, keys=keys, salt="consistency-ode", to_zero=False)
    t0 = torch.full((x.shape[0],), t_start, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        energy_logp = -model.energy(x, t0).double().cpu()
    d = model.dim
    return OdeGap((energy_logp - res.log_prob.cpu()) / d, res.stderr.cpu() / d, probes is None)


def heat_band(model: Energy, x: torch.Tensor, keys: Sequence, *, t_lo: float, t_hi: float, probes: int | None,
              salt: str) -> HeatBand:
    """The heat residual on x (B, *event_shape) at one log-uniform t per key in [t_lo, t_hi]."""
    n, d = x.shape[0], model.dim
    u = keyed_uniform(keys, (), salt + "-t", dtype=torch.float64)
    t = torch.exp(math.log(t_lo) + u * (math.log(t_hi) - math.log(t_lo))).to(device=x.device, dtype=x.dtype)
    z = keyed_normal(keys, tuple(x.shape[1:]), salt=salt + "-z", dtype=x.dtype, device=x.device)
    y = x + t.sqrt().reshape(-1, *[1] * (x.ndim - 1)) * z
    # heat_residual draws its probes from a generator: seeded by the salt, on a set of examples
    # fixed by the caller, so the result does not depend on the evaluation's batch size.
    gen = torch.Generator(device=x.device).manual_seed(key_seed(salt, "probes"))
    r = heat_residual(model, y, t, probes=probes, generator=gen).double().cpu() / d  # (B, P or 1): t R / d
    if probes is None:
        sq = r[:, 0].square()
    else:  # two independent halves of the probes: an unbiased estimate of (t R / d)^2
        h = r.shape[1] // 2
        sq = r[:, :h].mean(1) * r[:, h:].mean(1)
    se = float(sq.std() / math.sqrt(n)) if n > 1 else 0.0
    return HeatBand(t_lo, t_hi, float(sq.mean()), se)


def near_gaussian(model: Energy, x: torch.Tensor, keys: Sequence, *, t: float, probes: int | None,
                  moments: DataMoments | None = None) -> NearGaussian:
    """``t Laplacian U / d`` at ``y = x + sqrt(t) z`` (x (B, *event_shape)), against the Gaussian
    limit of the data ``moments`` (default: those of x)."""
    n, d = x.shape[0], model.dim
    z = keyed_normal(keys, tuple(x.shape[1:]), salt="consistency-gauss-z", dtype=x.dtype, device=x.device)
    tt = torch.full((n,), t, dtype=x.dtype, device=x.device)
    v = None
    if probes is not None:
        v = keyed_rademacher(keys, (probes, *x.shape[1:]), salt="consistency-gauss-v", dtype=x.dtype,
                             device=x.device).transpose(0, 1)
    _, lap, _ = laplacian(model, x + math.sqrt(t) * z, tt, v)
    per = (t * lap.double().cpu() / d).reshape(-1, n).mean(0)  # (B,), averaged over probes
    var = (moments or DataMoments.of(x)).var
    expected = float((t / (var + t)).mean())
    return NearGaussian(t, float(per.mean()), float(per.std() / math.sqrt(n)) if n > 1 else 0.0, expected)


def check(model: Energy, x: torch.Tensor, keys: Sequence, *, t_min: float, t_max: float,
          options: Options = Options(), bands: int = 4, batch_size: int = 256) -> Consistency:
    """All four checks on held-out x (N, *event_shape) with per-example ``keys``.

    log Z uses every example; the ODE the first ``options.ode_images``; the heat residual the
    first ``options.heat_examples`` in each of ``bands`` equal log-width bands of [t_min, t_max]
    (the evaluation's bands); the near-Gaussian check the first ``heat_examples`` (at least 2).
    The ODE runs from t_min to t_max. All noise is seeded by key.
    """
    with torch.enable_grad():  # Laplacians need autograd, also under a caller's no_grad
        return _check(model, x, list(keys), t_min=t_min, t_max=t_max, options=options, bands=bands,
                      batch_size=batch_size)


def _check(model, x, keys, *, t_min, t_max, options, bands, batch_size) -> Consistency:
    probes = _probes(model, options)
    agree = log_z_agreement(model, x, list(options.log_z_ts), keys=keys, batch_size=batch_size)
    gap = None
    if options.ode_images:
        k = min(options.ode_images, x.shape[0])
        gap = ode_gap(model, x[:k], keys[:k], t_start=t_min, t_end=t_max, steps=options.ode_steps, probes=probes)
    heat = []
    m = min(max(options.heat_examples, 2), x.shape[0])
    if options.heat_examples:
        edges = torch.logspace(math.log10(t_min), math.log10(t_max), bands + 1, dtype=torch.float64).tolist()
        heat = [heat_band(model, x[:m], keys[:m], t_lo=lo, t_hi=hi, probes=probes, salt=f"consistency-heat{i}")
                for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))]
    gauss = near_gaussian(model, x[:m], keys[:m], t=max(options.log_z_ts), probes=probes, moments=DataMoments.of(x))
    return Consistency(agree, gap, heat, gauss)


__all__ = ["check", "Consistency", "Options", "OdeGap", "HeatBand", "NearGaussian", "Bound", "metric_names",
           "out_of_bounds", "ode_gap", "heat_band", "near_gaussian", "LOG_Z_TS", "LOG_Z_SPREAD_MAX_NATS",
           "ODE_GAP_ABS_MAX_NATS_PER_DIM", "HEAT_RESIDUAL_RMS_MAX_NATS_PER_DIM", "NEAR_GAUSSIAN_DEVIATION_MAX",
           "EXACT_LAPLACIAN_MAX_DIM", "PREFIX"]
