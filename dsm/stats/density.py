"""Statistics of a learned density over a data set (no Ray, no MLflow): numpy in, numbers out.

Inputs are per-image arrays: log p in nats per image (``logp_nats`` of ``dsm score``) or in
dB/dim (``logp_db_per_dim``); d is the number of dimensions of one image.

- :func:`gumbel_fit`: maximum-likelihood Gumbel fit with a Kolmogorov-Smirnov check. The
  paper's log p histogram (dB/dim, ImageNet64 grayscale) is right-skewed: a long tail toward
  very probable (flat, sparse) images. Its numbers fix the orientation: mean 11.43 dB/dim,
  std 4.17, and a Gumbel fit of location 9.57, scale 3.17. The right-tailed (maximum)
  Gumbel has mean loc + 0.5772 scale = 11.40 and std 1.2825 scale = 4.07, which matches;
  the left-tailed one would have mean 7.74. So the default is ``tail="right"``
  (scipy.stats.gumbel_r).
- :func:`entropy_stats`: mean log p, differential entropy, the discrete entropy of 8-bit
  images, the size of the typical set, the most/least probable ratio.
- :func:`haar_participation_ratio`: the paper's sparsity measure of images (L1/L2 of all Haar
  coefficients).
- :func:`generalization`: agreement of two models' log p on the same images.
- :func:`gev_fit`: the generalized extreme value fit beside the Gumbel (its shape says Frechet,
  Gumbel or Weibull); :func:`train_test_cross_entropy`: the paper's Table 2;
  :func:`rows_evenly_spaced_in_value`: the paper's reference images along log p.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

LN2, LN10 = math.log(2.0), math.log(10.0)
LOG10_2 = math.log10(2.0)
EIGHT_BIT = 8  # bits per pixel value of an 8-bit image


def _finite_1d(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"{name}: empty")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: {int((~np.isfinite(a)).sum())} non-finite values")
    return a


@dataclass(frozen=True)
class GumbelFit:
    """A maximum-likelihood Gumbel fit, in the units of the data (dB/dim for log p).

    tail: ``right`` (scipy's gumbel_r, the maximum type, long right tail) or ``left``
    (gumbel_l). ks_stat / ks_pvalue: the one-sample Kolmogorov-Smirnov test against the
    fitted law; with parameters fitted on the same data the p-value is optimistic (no
    Lilliefors correction), so read the statistic, not the p-value, when n is large.
    """

    tail: str
    loc: float
    scale: float
    ks_stat: float
    ks_pvalue: float
    n: int

    @property
    def mean(self) -> float:
        """Mean of the fitted law: loc +- Euler's gamma * scale."""
        return self.loc + (1 if self.tail == "right" else -1) * np.euler_gamma * self.scale

    @property
    def std(self) -> float:
        return math.pi / math.sqrt(6) * self.scale

    def pdf(self, x) -> np.ndarray:
        return self._law().pdf(np.asarray(x, dtype=np.float64), self.loc, self.scale)

    def _law(self):
        from scipy import stats

        return stats.gumbel_r if self.tail == "right" else stats.gumbel_l

    def as_dict(self) -> dict:
        return {**asdict(self), "mean": self.mean, "std": self.std}


def gumbel_fit(x, tail: str = "right") -> GumbelFit:
    """ML Gumbel (location, scale) of the samples x, with the KS statistic and p-value."""
    from scipy import stats

    if tail not in ("right", "left"):
        raise ValueError(f"tail must be 'right' or 'left', got {tail!r}")
    a = _finite_1d(x, "gumbel_fit")
    if a.size < 3 or np.ptp(a) == 0:
        raise ValueError(f"gumbel_fit needs at least 3 distinct values, got {a.size} values")
    law = stats.gumbel_r if tail == "right" else stats.gumbel_l
    loc, scale = law.fit(a)
    ks = stats.kstest(a, law.cdf, args=(loc, scale))
    return GumbelFit(tail, float(loc), float(scale), float(ks.statistic), float(ks.pvalue), int(a.size))


@dataclass(frozen=True)
class GEVFit:
    """A maximum-likelihood generalized extreme value fit (scipy.stats.genextreme), beside the Gumbel.

    shape_c is scipy's shape; xi = -shape_c is the usual one: xi > 0 Frechet (heavy tail),
    xi = 0 Gumbel, xi < 0 Weibull (bounded tail). tail: ``right`` fits the data, ``left`` fits
    the mirrored data -x (loc is then reported in the data's frame: X = -Y, Y ~ GEV(c, -loc,
    scale)). loc, scale in the data's units (dB/dim for log p); KS as in :class:`GumbelFit`.
    """

    tail: str
    shape_c: float
    loc: float
    scale: float
    ks_stat: float
    ks_pvalue: float
    n: int

    @property
    def xi(self) -> float:
        return -self.shape_c

    def pdf(self, x) -> np.ndarray:
        from scipy import stats

        sign = 1.0 if self.tail == "right" else -1.0
        return stats.genextreme.pdf(sign * np.asarray(x, dtype=np.float64), self.shape_c, sign * self.loc, self.scale)

    def as_dict(self) -> dict:
        return {**asdict(self), "xi": self.xi}


def gev_fit(x, tail: str = "right") -> GEVFit:
    """ML GEV (shape, location, scale) of the samples x, started from the Gumbel fit, with KS."""
    from scipy import stats

    g = gumbel_fit(x, tail)  # validates x and tail; also the start of the search
    sign = 1.0 if tail == "right" else -1.0
    a = sign * _finite_1d(x, "gev_fit")
    c, loc, scale = stats.genextreme.fit(a, 0.0, loc=sign * g.loc, scale=g.scale)
    ks = stats.kstest(a, stats.genextreme.cdf, args=(c, loc, scale))
    return GEVFit(tail, float(c), float(sign * loc), float(scale), float(ks.statistic), float(ks.pvalue), int(a.size))


@dataclass(frozen=True)
class EntropyStats:
    """Entropy-type summaries of log p over n images of d dimensions.

    - mean_logp_nats: E log p per image (nats); mean_logp_db_per_dim: the same in dB/dim;
    - entropy_nats_per_dim / entropy_bits_per_dim: differential entropy h = -E log p, per dim
      (a cross-entropy estimate: the data's true entropy is at most this if the model is
      normalized), with its standard error over images (stderr_bits_per_dim);
    - discrete_bits_per_dim: entropy of the 8-bit images, 8 + h in bits/dim: the NLL in the
      8-bit "continuous" convention of ``dsm.core.units`` (the mean ``nll_bpd`` of ``dsm score``);
    - log10_typical_count: the typical set holds 2^(d H) images, H = discrete_bits_per_dim;
      this is its base-10 exponent d H log10(2);
    - log10_max_min_ratio: p(most probable) / p(least probable) = 10^this, i.e.
      (max log p - min log p) / ln 10.
    """

    n: int
    d: int
    mean_logp_nats: float
    mean_logp_db_per_dim: float
    entropy_nats_per_dim: float
    entropy_bits_per_dim: float
    stderr_bits_per_dim: float
    discrete_bits_per_dim: float
    log10_typical_count: float
    log10_max_min_ratio: float

    def as_dict(self) -> dict:
        return asdict(self)


def entropy_stats(logp_nats, d: int) -> EntropyStats:
    """Entropy summaries (see :class:`EntropyStats`) of log p in nats per image, shape (n,)."""
    a = _finite_1d(logp_nats, "log p")
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    n = a.size
    h_nats = -a.mean() / d
    h_bits = h_nats / LN2
    se_bits = float(a.std(ddof=1) / math.sqrt(n) / (d * LN2)) if n > 1 else 0.0
    discrete = EIGHT_BIT + h_bits
    return EntropyStats(
        n=n, d=int(d),
        mean_logp_nats=float(a.mean()),
        mean_logp_db_per_dim=float(10 * a.mean() / (d * LN10)),
        entropy_nats_per_dim=float(h_nats), entropy_bits_per_dim=float(h_bits), stderr_bits_per_dim=se_bits,
        discrete_bits_per_dim=float(discrete),
        log10_typical_count=float(d * discrete * LOG10_2),
        log10_max_min_ratio=float((a.max() - a.min()) / LN10),
    )


@dataclass(frozen=True)
class CrossEntropyGap:
    """The paper's Table 2: mean NLL on training and on held-out images, in bits/dim (the
    inputs' convention, e.g. the 8-bit one of ``nll_bpd``), each with its standard error over
    images, and gap = test - train with the error of two independent means."""

    n_train: int
    n_test: int
    train_bpd: float
    train_stderr: float
    test_bpd: float
    test_stderr: float
    gap_bpd: float
    gap_stderr: float

    def as_dict(self) -> dict:
        return asdict(self)


def train_test_cross_entropy(train_nll_bpd, test_nll_bpd) -> CrossEntropyGap:
    """Cross-entropy on train and test images from per-image NLLs (n_train,), (n_test,) bits/dim."""
    from scipy import stats

    tr, te = _finite_1d(train_nll_bpd, "train NLL"), _finite_1d(test_nll_bpd, "test NLL")
    if tr.size < 2 or te.size < 2:
        raise ValueError(f"need at least 2 images on each side, got {tr.size} train and {te.size} test")
    se_tr, se_te = float(stats.sem(tr)), float(stats.sem(te))
    return CrossEntropyGap(int(tr.size), int(te.size), float(tr.mean()), se_tr, float(te.mean()), se_te,
                           float(te.mean() - tr.mean()), math.hypot(se_tr, se_te))


def rows_evenly_spaced_in_value(values, k: int) -> list[int]:
    """Rows whose value is nearest to each of k evenly spaced values from min to max: how the
    paper picks its 15 reference images along log p (energy_histogram.ipynb). Distinct rows, in
    increasing value; fewer than k when the nearest rows coincide."""
    a = _finite_1d(values, "values")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order = np.argsort(a, kind="stable")
    targets = np.linspace(a[order[0]], a[order[-1]], k)
    nearest = [int(order[np.argmin(np.abs(a[order] - v))]) for v in targets]
    return list(dict.fromkeys(nearest))


def _haar_coefficients(images) -> list:
    """``pywt.wavedec2`` of (n, H, W) or (n, C, H, W) images over the last two axes: orthonormal
    Haar ('periodization'), at the deepest level pywt allows for min(H, W) (down to 1x1 for a
    power of two). Returns [approximation at level J, details at level J, ..., details at level 1]."""
    import pywt

    x = np.asarray(images, dtype=np.float64)
    if x.ndim not in (3, 4):
        raise ValueError(f"images must be (n, H, W) or (n, C, H, W), got shape {x.shape}")
    h, w = x.shape[-2:]
    level = pywt.dwt_max_level(min(h, w), "haar")
    if level < 1:
        raise ValueError(f"images of {h}x{w} pixels are too small for a Haar decomposition")
    return pywt.wavedec2(x, "haar", mode="periodization", level=level, axes=(-2, -1))


def haar_participation_ratio(images, scaling: str = "paper") -> np.ndarray:
    """The paper's sparsity measure of images (its Fig. 5 right): one number per image.

    images: (n, H, W) or (n, C, H, W), pixels in [0, 1] for dsm. All N coefficients c of a full
    Haar decomposition (every level, the coarse approximation, which carries the mean, included;
    every channel) give

        PR = (sum |c|)^2 / (N sum c^2),

    in [1/N, 1]: 1/N when one coefficient holds everything (a constant image: only the mean is
    non-zero), 1 when all have the same magnitude. It is invariant to contrast, not to the mean.
    scaling: ``paper`` (default), as the official notebook (affine_and_sparsity.ipynb) computes
    it: the orthonormal coefficients of level j (1 the finest; the approximation at level J)
    divided by 2^j, i.e. Haar coefficients normalized like block means; ``orthonormal``: the
    orthonormal coefficients unscaled (white noise then gives about 2/pi). An all-zero image
    gets 1/N, the limit of constant images.
    Returns (n,) float64.
    """
    if scaling not in ("paper", "orthonormal"):
        raise ValueError(f"scaling must be 'paper' or 'orthonormal', got {scaling!r}")
    coeffs = _haar_coefficients(images)
    n, levels = np.shape(images)[0], len(coeffs) - 1
    # wavedec2 lists the coarsest first: entry k >= 1 holds the details of level levels - k + 1.
    factors = [2.0 ** -levels] + [2.0 ** -(levels - k + 1) for k in range(1, len(coeffs))]
    if scaling == "orthonormal":
        factors = [1.0] * len(coeffs)
    bands = [(coeffs[0], factors[0])] + [(b, f) for lev, f in zip(coeffs[1:], factors[1:]) for b in lev]
    c = np.concatenate([f * b.reshape(n, -1) for b, f in bands], axis=1)
    l1, l2 = np.abs(c).sum(1), np.square(c).sum(1)
    out = np.full(n, 1.0 / c.shape[1])
    ok = l2 > 0
    out[ok] = l1[ok] ** 2 / l2[ok] / c.shape[1]
    return out


def spearman(x, y) -> tuple[float, float]:
    """Spearman rank correlation of two (n,) arrays and its two-sided p-value."""
    from scipy import stats

    a, b = _finite_1d(x, "x"), _finite_1d(y, "y")
    if a.size != b.size:
        raise ValueError(f"spearman: {a.size} and {b.size} values")
    r = stats.spearmanr(a, b)
    return float(r.statistic), float(r.pvalue)


@dataclass(frozen=True)
class Generalization:
    """Agreement of two models' log p on the same n images, in the inputs' units (dB/dim).

    pearson: correlation; rms_diff: sqrt(mean((a - b)^2)) (the offset included);
    mean_diff: mean(a - b).
    """

    n: int
    pearson: float
    rms_diff: float
    mean_diff: float

    def as_dict(self) -> dict:
        return asdict(self)


def generalization(a, b) -> Generalization:
    """Compare paired log p arrays a, b (n,), e.g. two models' ``logp_db_per_dim`` on a test set."""
    x, y = _finite_1d(a, "a"), _finite_1d(b, "b")
    if x.size != y.size or x.size < 2:
        raise ValueError(f"generalization needs two paired arrays of >= 2 values, got {x.size} and {y.size}")
    diff = x - y
    return Generalization(n=int(x.size), pearson=float(np.corrcoef(x, y)[0, 1]),
                          rms_diff=float(np.sqrt(np.mean(diff ** 2))), mean_diff=float(diff.mean()))
