"""Self-consistency of an energy U(y, t): does it describe one density flowing under the heat equation?

A trained energy can disagree with itself even where every loss term looks small: Z can drift
with t, ``-U`` and the probability-flow ODE can give different log p, and U can violate the
heat equation that every family ``p(., t) = p_0 * N(0, t I)`` obeys. This module measures
those disagreements on held-out data, on any :class:`dsm.core.energy.Energy` (the exact densities of
:mod:`dsm.core.toy` score zero on all of them). No Ray, no MLflow: ``dsm train``'s evaluation and
``dsm score`` both call :func:`check` and compare its :meth:`Consistency.metrics` against the
same :data:`BOUNDS`.

The four checks (nats; d = dimensions per example):

log Z spread
    Paired log Z (:func:`dsm.core.normalize.log_z_agreement`, the same data and z at every t) at
    several large t. Z of an exact family is constant in t; the spread max - min is how much
    mass the model creates or destroys between them.
ODE gap
    ``-U(x, t0)`` against ``log p(x, t0)`` from the PF-ODE (:func:`dsm.core.ode.ode_log_prob`, which
    uses only grad_y U), per image, in nats/dim. The ODE's endpoint density at T is the model's
    *own* unnormalized ``-U(y_T, T)``, not the Gaussian prior, so log Z cancels from both sides:
    the gap is ``int_t0^T R(y(t), t) dt`` along the ODE path exactly (up to Heun's error), R the
    heat residual below, and it does not move when log Z is wrong. (With the normalized energy
    and the Gaussian prior, as in ``benchmarks/score_vs_ode.py``, the gap also carries the
    log Z estimate's error and the Gaussian-limit error at T, per image.)
heat residual
    ``R = dU/dt - 1/2 Laplacian U + 1/2 ||grad U||^2`` (:func:`dsm.core.losses.heat_residual`), zero
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
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from dsm.core.energy import Energy
from dsm.core.losses import heat_residual
from dsm.core.normalize import DataMoments, LogZAgreement, log_z_agreement
from dsm.core.ode import laplacian, ode_log_prob
from dsm.core.seeding import key_seed, keyed_normal, keyed_rademacher, keyed_uniform

PREFIX = "consistency/"

# log Z is compared at these fractions of the training t_max: t = 100, 333 and 1000 for every
# shipped config (a 16x16 patches model had log Z = 140.17, 141.35, 142.40 there), and
# dsm normalize's agreement check (t/10, t/3, t).
LOG_Z_T_FRACTIONS: tuple[float, ...] = (0.1, 1 / 3, 1.0)

# Bounds (the targets of the CPU recipes study, docs/recipes.md). Each is a limit on the absolute
# value of one metric.
LOG_Z_SPREAD_MAX_NATS = 0.1  # max - min of log Z over the log Z t's
ODE_GAP_ABS_MAX_NATS_PER_DIM = 0.05  # mean |energy - ODE| log p over the ODE images
# The heat residual integrates to the ODE gap (int R dt = int t R d log t): a residual of one
# sign and this RMS across the shipped configs' training range [1e-4, 1e3] (16.1 units of
# log t) would integrate to exactly the ODE-gap bound, 0.05 / 16.1 = 0.0031 nats/dim.
HEAT_RESIDUAL_RMS_MAX_NATS_PER_DIM = ODE_GAP_ABS_MAX_NATS_PER_DIM / math.log(1e3 / 1e-4)
# The required ">= 0.997" for t Laplacian U / d, as a distance from the data's Gaussian limit
# (about 1 - mean var / t: above 0.9997 for images in [0, 1] at t = 1e3).
NEAR_GAUSSIAN_DEVIATION_MAX = 0.003

# Exact Laplacians (d Hessian-vector products, one backward pass each) up to this d, Hutchinson
# above. Measured on the smoke run's 8x8 digits model (d = 64): the exact trace made the checks
# 12x slower than 4 Hutchinson probes (81 s against 6.8 s) and moved no metric beyond its error
# bar. The toys (d = 2, 16) and small MLPs stay exact and free of probe noise.
EXACT_LAPLACIAN_MAX_DIM = 16


def log_z_ts(t_max: float) -> list[float]:
    """The noise variances of the log Z spread for a model trained up to ``t_max``."""
    return [f * t_max for f in LOG_Z_T_FRACTIONS]


def _t_tag(t: float) -> str:
    """A noise variance in a metric name, to 3 significant digits: 100, 333, 1000."""
    return f"{float(f'{t:.3g}'):g}"


@dataclass(frozen=True)
class Bound:
    """``|metric| <= limit``; ``what`` says in words what is bounded (for the warning line)."""

    metric: str  # a metric name, or the common start of a family of them (the heat bands)
    limit: float
    what: str


BOUNDS: tuple[Bound, ...] = (
    Bound(PREFIX + "log_z_spread_nats", LOG_Z_SPREAD_MAX_NATS, "max - min of log Z over large t"),
    Bound(PREFIX + "ode_gap_abs_nats_per_dim", ODE_GAP_ABS_MAX_NATS_PER_DIM, "mean |energy - PF-ODE log p|"),
    Bound(PREFIX + "near_gaussian_deviation", NEAR_GAUSSIAN_DEVIATION_MAX,
          "t Laplacian U / d minus its Gaussian limit"),
    Bound(PREFIX + "heat_residual_rms_nats_per_dim_band", HEAT_RESIDUAL_RMS_MAX_NATS_PER_DIM,
          "RMS of the heat-equation residual t R / d in that noise band"),
)


@dataclass(frozen=True)
class Options:
    """What :func:`check` measures. The defaults are ``dsm score``'s; ``dsm train`` takes its
    cheaper ones from the ``eval`` config section (:class:`dsm.train.config.EvalConfig`)."""

    log_z_ts: tuple[float, ...] | None = None  # None: LOG_Z_T_FRACTIONS of t_max
    ode_images: int = 8  # 0 skips the ODE gap
    ode_steps: int = 64  # Heun steps, uniform in log t
    heat_examples: int = 64  # per band, and for the near-Gaussian check; 0 skips both
    hutchinson_probes: int = 4  # above EXACT_LAPLACIAN_MAX_DIM; even: two halves give an unbiased square

    def __post_init__(self):
        if self.log_z_ts is not None and (len(self.log_z_ts) < 2 or not all(t > 0 for t in self.log_z_ts)):
            raise ValueError(f"log_z_ts needs at least two noise variances > 0, got {list(self.log_z_ts)}")
        if self.hutchinson_probes < 2 or self.hutchinson_probes % 2:
            raise ValueError(f"hutchinson_probes must be even and >= 2, got {self.hutchinson_probes}")
        if self.ode_images < 0 or self.heat_examples < 0 or self.ode_steps < 1:
            raise ValueError("ode_images and heat_examples must be >= 0 and ode_steps >= 1")

    def ts(self, t_max: float) -> list[float]:
        return list(self.log_z_ts) if self.log_z_ts is not None else log_z_ts(t_max)


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
        """Of the mean over images: the image-to-image spread plus the probe noise (the probe
        noise alone for a single image). Heun's error is not in it (docs/scoring.md)."""
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
    """Everything :func:`check` measured; ``None`` (or no bands) for a check that was skipped."""

    log_z: LogZAgreement
    ode: OdeGap | None = None
    heat: list[HeatBand] = field(default_factory=list)
    near_gaussian: NearGaussian | None = None

    def metrics(self) -> dict[str, float]:
        """Flat metrics named ``consistency/...`` with units in the name (see :func:`metric_names`)."""
        m = {PREFIX + "log_z_spread_nats": self.log_z.max_abs_diff, PREFIX + "log_z_chi2": self.log_z.chi2}
        for e in self.log_z.estimates:
            m[PREFIX + f"log_z_nats_t{_t_tag(e.t)}"] = e.value
            m[PREFIX + f"log_z_stderr_nats_t{_t_tag(e.t)}"] = e.stderr
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


def metric_names(options: Options, *, t_max: float, bands: int) -> set[str]:
    """The keys of :meth:`Consistency.metrics` for these options, t_max and heat bands."""
    names = {PREFIX + "log_z_spread_nats", PREFIX + "log_z_chi2"}
    names |= {PREFIX + f"log_z{s}_nats_t{_t_tag(t)}" for t in options.ts(t_max) for s in ("", "_stderr")}
    if options.ode_images:
        names |= {PREFIX + f"ode_gap{s}_nats_per_dim" for s in ("", "_stderr", "_abs")}
    if options.heat_examples:
        names |= {PREFIX + f"heat_residual_rms{s}_nats_per_dim_band{i}" for i in range(bands) for s in ("", "_stderr")}
        names |= {PREFIX + "near_gaussian_t_lap_per_dim", PREFIX + "near_gaussian_t_lap_per_dim_stderr",
                  PREFIX + "near_gaussian_deviation"}
    return names


def bound_of(metric: str) -> Bound | None:
    """The bound on ``metric``, or None for an unbounded one (standard errors, chi2, the values)."""
    for b in BOUNDS:
        if metric == b.metric or (b.metric.endswith("_band") and metric.startswith(b.metric)
                                  and metric[len(b.metric):].isdigit()):
            return b
    return None


def out_of_bounds(metrics: dict[str, float]) -> list[str]:
    """One warning line per bounded metric in ``metrics`` beyond its bound, naming the metric,
    its value and the bound (NaN counts as beyond)."""
    lines = []
    for name, v in metrics.items():
        b = bound_of(name)
        if b is not None and not abs(v) <= b.limit:
            lines.append(f"WARNING: {name} = {v:.4g} is beyond its bound {b.limit:.4g} ({b.what}; see docs/scoring.md)")
    return lines


# -- the checks ----------------------------------------------------------------------------

def _probes(model: Energy, options: Options) -> int | None:
    """None (exact Laplacian) for small d, else the number of Hutchinson probes."""
    return None if model.dim <= EXACT_LAPLACIAN_MAX_DIM else options.hutchinson_probes


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


def check(model: Energy, x: torch.Tensor, keys: Sequence, *, band_edges: Sequence[float],
          options: Options = Options(), batch_size: int = 256) -> Consistency:
    """All four checks on held-out x (N, *event_shape) with per-example ``keys``.

    band_edges: increasing noise variances, the evaluation's bands of log t; the first and last
    are the training t_min and t_max. log Z uses every example, at ``options.ts(t_max)``; the
    ODE the first ``options.ode_images``, from t_min to t_max; the heat residual the first
    ``options.heat_examples`` (at least 2) in each band, and the near-Gaussian check the same
    examples at the largest log Z t. All noise is seeded by key.
    """
    with torch.enable_grad():  # Laplacians need autograd, also under a caller's no_grad
        return _check(model, x, list(keys), list(band_edges), options, batch_size)


def _check(model: Energy, x: torch.Tensor, keys: list, edges: list[float], options: Options,
           batch_size: int) -> Consistency:
    probes = _probes(model, options)
    ts = options.ts(edges[-1])
    out = Consistency(log_z_agreement(model, x, ts, keys=keys, batch_size=batch_size))
    if options.ode_images:
        k = min(options.ode_images, x.shape[0])
        out.ode = ode_gap(model, x[:k], keys[:k], t_start=edges[0], t_end=edges[-1], steps=options.ode_steps,
                          probes=probes)
    if options.heat_examples:
        m = min(max(options.heat_examples, 2), x.shape[0])
        out.heat = [heat_band(model, x[:m], keys[:m], t_lo=lo, t_hi=hi, probes=probes, salt=f"consistency-heat{i}")
                    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))]
        out.near_gaussian = near_gaussian(model, x[:m], keys[:m], t=max(ts), probes=probes, moments=DataMoments.of(x))
    return out


__all__ = ["check", "Consistency", "Options", "OdeGap", "HeatBand", "NearGaussian", "Bound", "BOUNDS", "bound_of",
           "metric_names", "out_of_bounds", "ode_gap", "heat_band", "near_gaussian", "log_z_ts",
           "LOG_Z_T_FRACTIONS", "LOG_Z_SPREAD_MAX_NATS",
           "ODE_GAP_ABS_MAX_NATS_PER_DIM", "HEAT_RESIDUAL_RMS_MAX_NATS_PER_DIM", "NEAR_GAUSSIAN_DEVIATION_MAX",
           "EXACT_LAPLACIAN_MAX_DIM", "PREFIX"]
