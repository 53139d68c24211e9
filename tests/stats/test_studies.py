"""dsm.stats.studies on exact Gaussians, against closed forms computed here independently."""

import math

import numpy as np
import pytest
import torch

from dsm.core import toy
from dsm.stats import studies

D = 16
TO_DB = 10 / (D * math.log(10))  # nats per image -> dB/dim


@pytest.fixture(scope="module")
def gaussian():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(D, D, generator=g, dtype=torch.float64) * 0.1
    cov = a @ a.T + 0.01 * torch.eye(D, dtype=torch.float64)
    return toy.Gaussian(0.3 + 0.4 * torch.rand(D, generator=g, dtype=torch.float64), cov)


def _mvn(gauss, t=0.0):
    cov = gauss.covs[0] + t * torch.eye(D, dtype=torch.float64)
    return torch.distributions.MultivariateNormal(gauss.means[0], covariance_matrix=cov)


def test_logp_affine_is_the_density_of_the_transformed_image(gaussian):
    x = torch.rand(3, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a, b = np.linspace(0, 1, 5), np.array([0.0, 0.25, 0.5])
    out = studies.logp_affine(gaussian, x, a, b)
    assert out.shape == (3, 3, 5)
    for i in range(3):
        for j, off in enumerate(b):
            for k, gain in enumerate(a):
                exact = float(_mvn(gaussian).log_prob(gain * x[i] + off)) * TO_DB
                assert out[i, j, k] == pytest.approx(exact, rel=1e-9, abs=1e-9)
    # log Z enters once: a shifted normalization shifts every entry by the same amount.
    shifted = toy.Gaussian(gaussian.means[0], gaussian.covs[0])
    shifted.log_z.fill_(2.0)
    np.testing.assert_allclose(studies.logp_affine(shifted, x, a, b), out - 2.0 * TO_DB, rtol=1e-12, atol=1e-12)


def test_noisy_logp_matches_the_closed_form(gaussian):
    """E_z log N(x + sqrt(t) z; mu, S + tI) = log N(x; mu, S + tI) - t tr((S + tI)^-1) / 2."""
    x = torch.rand(2, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ts = [1e-3, 1e-1, 10.0]
    res = studies.noisy_logp(gaussian, x, ts, n_noise=400, keys=["a", "b"])
    assert res.mean.shape == (2, 3) and res.n_noise == 400
    for j, t in enumerate(ts):
        cov_t = gaussian.covs[0] + t * torch.eye(D, dtype=torch.float64)
        exact = (_mvn(gaussian, t).log_prob(x) - 0.5 * t * torch.linalg.inv(cov_t).trace()) * TO_DB
        for i in range(2):
            assert abs(res.mean[i, j] - float(exact[i])) < 4 * res.stderr[i, j] + 1e-9, (i, t)
    # keyed noise: one image alone gives the same curve as in the batch
    alone = studies.noisy_logp(gaussian, x[1:], ts, n_noise=400, keys=["b"])
    np.testing.assert_array_equal(alone.mean[0], res.mean[1])


def test_best_constant_image_of_an_isotropic_gaussian_is_its_mean():
    m = 0.3712
    gauss = toy.Gaussian(torch.full((D,), m, dtype=torch.float64), 0.05 * torch.eye(D, dtype=torch.float64))
    c, logp_db = studies.best_constant_image(gauss, dtype=torch.float64)
    assert c == pytest.approx(m, abs=1e-5)  # off the 0.01 grid: the refinement finds it
    assert logp_db == pytest.approx(-0.5 * D * math.log(2 * math.pi * 0.05) * TO_DB, rel=1e-9)
    # a mean outside [0, 1]: the best constant is at the bound
    far = toy.Gaussian(torch.full((D,), 1.7, dtype=torch.float64), 0.05 * torch.eye(D, dtype=torch.float64))
    assert studies.best_constant_image(far, dtype=torch.float64)[0] == pytest.approx(1.0, abs=1e-6)


def test_uniform_noise_logp_matches_the_expected_log_density(gaussian):
    """E_u log N(u; mu, S) for u ~ U[0,1)^d: -1/2 tr(S^-1 (I/12 + (1/2 - mu)(1/2 - mu)^T)) - 1/2 log det(2 pi S)."""
    v = studies.uniform_noise_logp(gaussian, n=4000, seed=3, dtype=torch.float64)
    assert v.shape == (4000,)
    s_inv = torch.linalg.inv(gaussian.covs[0])
    dev = 0.5 - gaussian.means[0]
    second = torch.eye(D, dtype=torch.float64) / 12 + torch.outer(dev, dev)
    exact = (-0.5 * (s_inv @ second).trace() - 0.5 * torch.logdet(2 * math.pi * gaussian.covs[0])) * TO_DB
    assert abs(v.mean() - float(exact)) < 4 * v.std() / math.sqrt(len(v))
    first = studies.uniform_noise_logp(gaussian, n=5, seed=3, dtype=torch.float64)
    np.testing.assert_allclose(first, v[:5], rtol=1e-12)
