"""Classical density baselines on flattened images: a full-covariance Gaussian and Gaussian mixtures.

Each baseline is fitted by scikit-learn's EM (:class:`sklearn.mixture.GaussianMixture`, full
covariances; K = 1 is the maximum-likelihood Gaussian) on training images flattened to (n, d)
float64, and returned as an exact dsm density, :class:`dsm.core.toy.GaussianMixture` (an
:class:`~dsm.core.energy.Energy` with log Z = 0 whose U(y, t) is -log of the mixture convolved with
N(0, t I)). So with one object:

- log p(x) "as fitted" is -U(x, 0);
- log p_t(x) "smoothed to t" is -U(x, t): the exact density of x + sqrt(t) z under the baseline
  (every covariance plus t I). At the energy model's training floor t_min this is the same blur
  that the model's own log p carries (the model represents the data convolved with N(0, t_min I)).

Units: log p in nats per image; means, standard errors and paired differences per dimension
(nats/dim, and bits/dim = nats/dim / ln 2). No Ray, no MLflow here (``dsm report`` uses it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dsm.core.toy import GaussianMixture

# scikit-learn's own default. It is added to every covariance's diagonal: it keeps the covariance
# of constant pixels (the corners of digits, clipped patches) invertible while staying below the
# variance of the 8-bit quantization step, (1/255)^2 / 12 = 1.3e-6, so it blurs nothing the data
# resolves. It still sets log p along degenerate directions in the as-fitted column (about
# -1/2 log(2 pi 1e-6) = +6 nats per such direction); the smoothed column adds t_min on top.
REG_COVAR = 1e-6
N_INIT = 1  # EM restarts; scikit-learn's default. More restarts only raise the training likelihood.
MAX_ITER = 100  # scikit-learn's default; `converged` says whether it sufficed
TOL = 1e-3  # scikit-learn's default: change of the mean training log-likelihood, in nats per image
SEED = 0  # seeds the k-means initialisation (and the report's training subsample)
BATCH_ELEMENTS = 1 << 23  # (B, K, d) float64 intermediates per batch: 64 MiB each


@dataclass
class Baseline:
    """One fitted baseline. ``density`` is the exact mixture (dsm.core.toy.GaussianMixture, float64)."""

    k: int  # components; 1 = the full-covariance Gaussian
    reg_covar: float  # added to each covariance's diagonal (variance units, pixel values squared)
    converged: bool  # scikit-learn's EM reached ``tol`` within ``max_iter``
    n_iter: int  # EM iterations of the best restart
    n_train: int  # training images the fit used
    density: GaussianMixture

    @property
    def name(self) -> str:
        return "Gaussian (full covariance)" if self.k == 1 else f"Gaussian mixture, K = {self.k}"

    def as_dict(self) -> dict:
        return {"k": self.k, "name": self.name, "reg_covar": self.reg_covar, "converged": self.converged,
                "n_iter": self.n_iter, "n_train": self.n_train}


def flatten(x) -> np.ndarray:
    """Images (n, *shape) or vectors (n, d), array or tensor, as a C-contiguous (n, d) float64 array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"need a batch of images or vectors (n, ...), got shape {x.shape}")
    return np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float64)


def fit_baseline(x, k: int, *, reg_covar: float = REG_COVAR, n_init: int = N_INIT, max_iter: int = MAX_ITER,
                 tol: float = TOL, seed: int = SEED) -> Baseline:
    """Fit a K-component full-covariance Gaussian mixture to training data x (n, ...) by EM.

    K = 1 gives the maximum-likelihood Gaussian (mean, covariance with 1/n, plus reg_covar I).
    A fit that stops at ``max_iter`` is kept and reported with ``converged=False``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    x = flatten(x)
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}")
    if len(x) < max(2, k):
        raise ValueError(f"need at least max(2, K) = {max(2, k)} training images for K = {k}, got {len(x)}")
    if not reg_covar >= 0:
        raise ValueError(f"reg_covar must be >= 0, got {reg_covar}")
    gm = SkGaussianMixture(n_components=k, covariance_type="full", reg_covar=reg_covar, n_init=n_init,
                           max_iter=max_iter, tol=tol, random_state=seed)
    with warnings.catch_warnings():
        # Non-convergence is reported through `converged`, not as a warning.
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(x)
    covs = 0.5 * (gm.covariances_ + gm.covariances_.transpose(0, 2, 1))  # symmetric to the last bit
    density = GaussianMixture(gm.weights_, gm.means_, covs)
    return Baseline(k, float(reg_covar), bool(gm.converged_), int(gm.n_iter_), len(x), density)


def fit_baselines(x, ks: Iterable[int], **fit_options) -> list[Baseline]:
    """One :func:`fit_baseline` per K on the same training data (flattened once)."""
    x = flatten(x)
    return [fit_baseline(x, k, **fit_options) for k in ks]


def log_prob(density: GaussianMixture, x, t: float = 0.0, batch_size: int | None = None) -> np.ndarray:
    """log p_t(x) = -U(x, t) in nats per image, (n,) float64: the baseline's exact log-density of
    x + sqrt(t) z (t = 0: as fitted). Rows go in batches so that each (B, K, d) intermediate stays
    near 64 MiB whatever d is (a few live at once: about 250 MiB at the peak); the (K, d, d)
    eigenbases are the only d^2 memory."""
    x = flatten(x)
    n, d = x.shape
    if d != density.dim:
        raise ValueError(f"data has d = {d} dimensions per image, the baseline {density.dim}")
    if not t >= 0:
        raise ValueError(f"t must be >= 0, got {t}")
    bs = batch_size or max(1, BATCH_ELEMENTS // (density.n_components * d))
    out = np.empty(n, dtype=np.float64)
    with torch.no_grad():
        for a in range(0, n, bs):
            y = torch.from_numpy(x[a:a + bs])
            out[a:a + bs] = (-density.energy(y, torch.full((len(y),), float(t), dtype=torch.float64))).numpy()
    return out


@dataclass
class MeanSE:
    """A mean over images and its standard error (std with ddof=1 over sqrt(n)), in nats/dim."""

    n: int
    mean_nats_per_dim: float
    stderr_nats_per_dim: float

    @property
    def mean_bits_per_dim(self) -> float:
        return self.mean_nats_per_dim / math.log(2)

    @property
    def stderr_bits_per_dim(self) -> float:
        return self.stderr_nats_per_dim / math.log(2)

    def as_dict(self) -> dict:
        return {"n": self.n, "mean_nats_per_dim": self.mean_nats_per_dim,
                "stderr_nats_per_dim": self.stderr_nats_per_dim, "mean_bits_per_dim": self.mean_bits_per_dim,
                "stderr_bits_per_dim": self.stderr_bits_per_dim}


def mean_se(logp_nats: Sequence[float], d: int) -> MeanSE:
    """Mean log p per dimension over images, with its standard error (nan for one image).
    logp_nats: (n,) nats per image; d: dimensions per image."""
    v = np.asarray(logp_nats, dtype=np.float64) / d
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"need a non-empty (n,) array of log p, got shape {v.shape}")
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return MeanSE(len(v), float(v.mean()), se)


def paired_difference(model_logp_nats: Sequence[float], baseline_logp_nats: Sequence[float], d: int) -> MeanSE:
    """Model minus baseline log p on the same images, (n,) nats each: the mean per-image difference
    in nats/dim (positive: the model assigns the held-out images more probability) and its paired
    standard error. Pairing removes the image-to-image spread both densities share, so the error
    is far below that of two separate means. It is over images only: the baseline's and the
    model's own fitting noise is not in it."""
    a = np.asarray(model_logp_nats, dtype=np.float64)
    b = np.asarray(baseline_logp_nats, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} and {b.shape}")
    return mean_se(a - b, d)


__all__ = ["REG_COVAR", "N_INIT", "MAX_ITER", "TOL", "SEED", "Baseline", "flatten", "fit_baseline",
           "fit_baselines", "log_prob", "MeanSE", "mean_se", "paired_difference"]
