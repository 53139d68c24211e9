"""dsm.stats.baselines: scikit-learn Gaussian mixtures as exact dsm densities, checked against known densities."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from dsm.core import toy
from dsm.stats import baselines as bl

N_TRAIN, N_TEST = 20_000, 4_000


def _samples(density: toy.GaussianMixture, n: int, seed: int) -> np.ndarray:
    return density.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()


def _exact_logp(density: toy.GaussianMixture, x: np.ndarray) -> np.ndarray:
    return -density.energy(torch.from_numpy(x), torch.zeros(len(x), dtype=torch.float64)).numpy()


def _random_cov(d: int, seed: int, scales=(0.1, 2.0)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q @ np.diag(np.geomspace(*scales, d) ** 2) @ q.T


def _check_recovers(density: toy.GaussianMixture, k: int, exact_mean_logp: float, exact_se: float) -> bl.MeanSE:
    """Fit K components on N_TRAIN samples; on N_TEST held-out samples the baseline's mean log p
    must match the exact density's, within Monte Carlo error plus the fitting error. The fitting
    error is the expected KL of a maximum-likelihood fit, (number of parameters) / (2 n) nats."""
    d = density.dim
    fit = bl.fit_baseline(_samples(density, N_TRAIN, seed=1), k)
    assert fit.converged and fit.k == k and fit.n_train == N_TRAIN
    x = _samples(density, N_TEST, seed=2)
    got = bl.mean_se(bl.log_prob(fit.density, x), d)
    kl = (k * (d + d * (d + 1) / 2) + k - 1) / (2 * N_TRAIN) / d  # nats/dim
    # Unpaired: against the exact E log p (closed form or stratified Monte Carlo).
    se = math.hypot(got.stderr_nats_per_dim, exact_se / d)
    assert abs(got.mean_nats_per_dim - exact_mean_logp / d) < 4 * se + 3 * kl
    # Paired on the same images: the baseline loses at most a few times the expected KL.
    diff = bl.paired_difference(_exact_logp(density, x), bl.log_prob(fit.density, x), d)
    assert diff.stderr_nats_per_dim < 0.1 * got.stderr_nats_per_dim  # pairing removes the shared spread
    assert abs(diff.mean_nats_per_dim) < 4 * diff.stderr_nats_per_dim + 3 * kl
    return diff


def test_gaussian_baseline_recovers_the_exact_log_p():
    gauss = toy.Gaussian(np.linspace(-1, 1, 6), _random_cov(6, seed=0))
    _check_recovers(gauss, 1, -gauss.entropy(), 0.0)


def test_mixture_baseline_recovers_a_separated_two_component_mixture():
    d = 4
    mix = toy.GaussianMixture([0.3, 0.7], np.stack([np.full(d, -4.0), np.full(d, 4.0)]),
                              np.stack([_random_cov(d, seed=1), _random_cov(d, seed=2, scales=(0.3, 1.0))]))
    h, h_se = mix.entropy_mc(200_000, torch.Generator().manual_seed(3))
    _check_recovers(mix, 2, -h, h_se)
    # A single Gaussian cannot: the same check fails for K = 1 by far more than the tolerance.
    x = _samples(mix, N_TEST, seed=2)
    one = bl.fit_baseline(_samples(mix, N_TRAIN, seed=1), 1)
    assert bl.paired_difference(_exact_logp(mix, x), bl.log_prob(one.density, x), d).mean_nats_per_dim > 0.5


def test_smoothed_baseline_is_the_gaussian_with_covariance_plus_t():
    """K = 1 is the ML Gaussian (mean, covariance with 1/n, plus reg_covar I); smoothed to t it is
    N(mean, cov + reg_covar I + t I) exactly, and batching does not change it."""
    x_train = _samples(toy.Gaussian(np.zeros(5), _random_cov(5, seed=4)), 500, seed=5)
    fit = bl.fit_baseline(x_train, 1, reg_covar=1e-3)
    mean, cov = x_train.mean(0), np.cov(x_train.T, bias=True) + 1e-3 * np.eye(5)
    x = _samples(toy.Gaussian(np.ones(5), np.eye(5)), 50, seed=6)
    for t in (0.0, 1e-3, 0.5, 10.0):
        want = stats.multivariate_normal(mean, cov + t * np.eye(5)).logpdf(x)
        np.testing.assert_allclose(bl.log_prob(fit.density, x, t), want, rtol=1e-9)
        np.testing.assert_allclose(bl.log_prob(fit.density, x, t, batch_size=7), want, rtol=1e-9)


def test_smoothed_mixture_is_the_mixture_of_smoothed_components():
    mix = toy.anisotropic_mixture(3, n_components=3, seed=0)
    fit = bl.fit_baseline(_samples(mix, 3000, seed=7), 3)
    w, mu, cov = (a.numpy() for a in (fit.density.log_w.exp(), fit.density.means, fit.density.covs))
    x = _samples(mix, 40, seed=8)
    t = 0.2
    comps = [np.log(w[k]) + stats.multivariate_normal(mu[k], cov[k] + t * np.eye(3)).logpdf(x) for k in range(3)]
    np.testing.assert_allclose(bl.log_prob(fit.density, x, t), logsumexp(comps, axis=0), rtol=1e-9)


def test_paired_difference_of_hand_made_arrays():
    model = np.array([10.0, 12.0, 9.0, 15.0])
    base = np.array([8.0, 8.0, 3.0, 7.0])  # per image: 2, 4, 6, 8 nats; d = 2: 1, 2, 3, 4 nats/dim
    p = bl.paired_difference(model, base, d=2)
    se = math.sqrt(5 / 3) / 2  # std (ddof 1) of 1, 2, 3, 4 over sqrt(4)
    assert (p.n, p.mean_nats_per_dim, p.stderr_nats_per_dim) == (4, pytest.approx(2.5), pytest.approx(se))
    assert p.mean_bits_per_dim == pytest.approx(2.5 / math.log(2))
    assert p.stderr_bits_per_dim == pytest.approx(se / math.log(2))
    assert p.as_dict()["stderr_bits_per_dim"] == pytest.approx(se / math.log(2))
    assert math.isnan(bl.paired_difference([1.0], [0.0], 1).stderr_nats_per_dim)
    with pytest.raises(ValueError, match="shape"):
        bl.paired_difference(model, base[:3], 2)


def test_non_convergence_is_reported_not_warned():
    x = _samples(toy.anisotropic_mixture(3, n_components=3, seed=0), 2000, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = bl.fit_baseline(x, 3, max_iter=1)
    assert not fit.converged and fit.n_iter == 1
    assert fit.as_dict() == {"k": 3, "name": "Gaussian mixture, K = 3", "reg_covar": 1e-6, "converged": False,
                             "n_iter": 1, "n_train": 2000}


def test_bad_inputs_name_the_problem():
    x = np.zeros((5, 2, 2))  # images are flattened: d = 4
    with pytest.raises(ValueError, match="K must be"):
        bl.fit_baseline(x, 0)
    with pytest.raises(ValueError, match="at least"):
        bl.fit_baseline(x, 6)
    fit = bl.fit_baseline(np.random.default_rng(0).random((50, 2, 2)), 1)  # constant pixels are fine too
    assert fit.density.dim == 4
    with pytest.raises(ValueError, match="d = 3"):
        bl.log_prob(fit.density, np.zeros((2, 3)))
    assert np.isfinite(bl.log_prob(bl.fit_baseline(x, 1).density, x)).all()  # all-constant: reg_covar keeps it finite
