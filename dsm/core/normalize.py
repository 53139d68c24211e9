"""log Z of a trained energy, from the near-Gaussian limit at large t.

At t much larger than the data variance, ``p(., t) ~ N(mu, Sigma + t I)``. Three estimators
of ``log Z = log int exp(-U(y, t)) dy`` use held-out x and ``y = x + sqrt(t) z``:

plain (the paper's, as its official code computes it at t = 1e3)
    ``log Z = d/2 log(2 pi e t) - E[U(y, t)]``: the entropy of N(., t I) stands in for that of
    p_t. It is biased by ``-1/2 sum_i log(1 + lambda_i / t) ~ -tr(Sigma) / (2t)`` nats (about
    -0.1 nats for 64x64 ImageNet at t = 1e3). Its per-sample spread is that of ``U``, about
    sqrt(d/2) nats.
plain_data_var
    ``log Z = H_gauss(t) - E[U(y, t)]``, with ``H_gauss = 1/2 sum_i log(2 pi e (lambda_i + t))``
    and lambda_i the per-dimension variances of the held-out data (the diagonal of Sigma):
    the ``tr(Sigma) / (2t)`` correction to first order. Same spread as plain.
paired (control variate; dsm's default)
    ``log Z = E[-U(y, t) - log q_t(y)]`` with ``q_t = N(mu, diag(var) + t I)``. The same
    expectation as plain_data_var up to ``KL(p_t || q_t) = O(1/t^2)``, but ``-U - log q_t`` is
    nearly constant in y, so its variance is far lower.
Estimates at several large t should agree if TSM has made Z constant in t; a spread beyond
the standard errors means mass is not conserved (:func:`log_z_agreement`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from dsm.core.energy import Energy
from dsm.core.noise import bcast
from dsm.core.seeding import default_keys, keyed_normal

LOG_2PI = math.log(2 * math.pi)


def gaussian_entropy(d: int, t: float) -> float:
    """Entropy of the isotropic Gaussian N(., t I) in d dimensions, ``d/2 log(2 pi e t)`` nats."""
    return 0.5 * d * (LOG_2PI + 1 + math.log(t))


@dataclass(frozen=True)
class DataMoments:
    """Per-dimension mean and variance of held-out data, both (d,) float64."""

    mean: torch.Tensor
    var: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor) -> DataMoments:
        x = x.flatten(1).double()
        if x.shape[0] < 2:
            raise ValueError("need at least 2 held-out examples to estimate data moments")
        return cls(x.mean(0), x.var(0))

    def log_q(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log N(y; mean, diag(var) + t I), (B,) float64."""
        mean, var = self.mean.to(y.device), self.var.to(y.device)
        v = var[None] + t.double()[:, None]
        dev = y.flatten(1).double() - mean[None]
        return -0.5 * (dev.square() / v + LOG_2PI + v.log()).sum(1)

    def entropy(self, t: float) -> float:
        """H_gauss(t) = 1/2 sum_i log(2 pi e (var_i + t)) in nats."""
        return float(0.5 * (LOG_2PI + 1 + torch.log(self.var + t)).sum())


@dataclass(frozen=True)
class LogZ:
    """A log Z estimate in nats with its standard error, at noise variance ``t``."""

    value: float
    stderr: float
    t: float
    n: int
    method: str

    def as_dict(self) -> dict:
        return asdict(self)


def _per_sample(model: Energy, x: torch.Tensor, t: float, keys, salt: str, batch_size: int,
                estimate) -> torch.Tensor:
    """``estimate(U(y, t), y, t)`` per sample (float64, (B,)) for y = x + sqrt(t) z, z seeded
    per key; batch by batch, so that no noisy copy of the whole data set is held in memory."""
    vals = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        z = keyed_normal(keys[i:i + batch_size], tuple(xb.shape[1:]), salt=salt, dtype=xb.dtype, device=xb.device)
        tb = torch.full((xb.shape[0],), t, dtype=xb.dtype, device=xb.device)
        yb = xb + bcast(tb.sqrt(), xb) * z
        with torch.no_grad():
            u = model.energy(yb, tb).double()
        vals.append(estimate(u, yb, tb))
    return torch.cat(vals).cpu()


LogZMethod = Literal["paired", "plain", "plain_data_var"]
LOG_Z_METHODS: tuple[str, ...] = ("paired", "plain", "plain_data_var")


def estimate_log_z(model: Energy, x: torch.Tensor, t: float, method: LogZMethod = "paired",
                   moments: DataMoments | None = None, keys: Sequence | None = None, salt: str = "log_z",
                   batch_size: int = 1024) -> LogZ:
    """Estimate log Z at noise variance ``t`` from held-out clean data ``x`` (B, *event_shape).

    The noise of example i is seeded from ``keys[i]`` (default: its row index).
    """
    if not t > 0:
        raise ValueError(f"log Z needs a noise variance t > 0, got {t}")
    if method not in LOG_Z_METHODS:
        raise ValueError(f"method must be one of {', '.join(LOG_Z_METHODS)}; got {method!r}")
    n = x.shape[0]
    if n < 2:
        raise ValueError("need at least 2 held-out examples to estimate log Z with an error")
    model.check_inputs(x, torch.zeros(n, dtype=x.dtype, device=x.device))
    moments = moments or DataMoments.of(x)
    keys = list(keys) if keys is not None else default_keys(n)
    if method == "paired":  # -U(y) - log q_t(y)
        estimate = lambda u, y, tb: -u - moments.log_q(y, tb)  # noqa: E731
    else:  # H(t) - U(y), H the entropy of N(., t I) (plain) or of N(., diag(var) + t I)
        h = gaussian_entropy(model.dim, t) if method == "plain" else moments.entropy(t)
        estimate = lambda u, y, tb: h - u  # noqa: E731
    vals = _per_sample(model, x, t, keys, salt, batch_size, estimate)
    if not torch.isfinite(vals).all():
        raise ValueError(f"non-finite energies at t={t:g}: the model returned NaN/Inf")
    return LogZ(float(vals.mean()), float(vals.std() / math.sqrt(n)), float(t), n, method)


@dataclass(frozen=True)
class LogZAgreement:
    """log Z at several large t. ``chi2`` is the spread against the weighted mean, in units of
    the standard errors (about ``len(estimates) - 1`` when Z is constant in t)."""

    estimates: list[LogZ]
    weighted_mean: float
    chi2: float
    max_abs_diff: float

    @property
    def consistent(self) -> bool:
        """True unless the spread is beyond what the errors allow (chi2 p < 0.001, roughly)."""
        k = len(self.estimates) - 1
        return self.chi2 <= k + 3.1 * math.sqrt(2 * k) + 4.0


def log_z_agreement(model: Energy, x: torch.Tensor, ts: Sequence[float], **kwargs) -> LogZAgreement:
    """The several-large-t diagnostic: paired log Z at each of ``ts`` (same data, same z)."""
    if len(ts) < 2:
        raise ValueError("the agreement diagnostic needs at least two noise levels")
    est = [estimate_log_z(model, x, t, **kwargs) for t in ts]
    w = torch.tensor([1 / max(e.stderr, 1e-12) ** 2 for e in est], dtype=torch.float64)
    v = torch.tensor([e.value for e in est], dtype=torch.float64)
    mean = float((w * v).sum() / w.sum())
    chi2 = float((w * (v - mean).square()).sum())
    return LogZAgreement(est, mean, chi2, float(v.max() - v.min()))


def normalize(model: Energy, x: torch.Tensor, t: float, **kwargs) -> LogZ:
    """Estimate log Z at ``t`` (paired) and store it in ``model.log_z``; returns the estimate."""
    est = estimate_log_z(model, x, t, **kwargs)
    model.log_z.fill_(est.value)
    return est
