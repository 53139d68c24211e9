import math

import pytest
import torch

from dsm.core import toy
from dsm.core.energy import Energy


@pytest.fixture(scope="module")
def mixture():
    return toy.anisotropic_mixture(3, n_components=3, seed=4)


def test_gaussian_matches_closed_form():
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    mu = torch.tensor([0.3, -1.0], dtype=torch.float64)
    g = toy.Gaussian(mu, cov)
    y = torch.randn(7, 2, dtype=torch.float64)
    t = torch.rand(7, dtype=torch.float64) + 0.1
    s = g.scores(y, t)
    for i in range(7):
        st = cov + t[i] * torch.eye(2, dtype=torch.float64)
        inv = torch.linalg.inv(st)
        dev = y[i] - mu
        u = 0.5 * dev @ inv @ dev + 0.5 * torch.logdet(2 * math.pi * st)
        assert s.energy[i].item() == pytest.approx(u.item(), rel=1e-10)
        assert torch.allclose(s.grad_y[i], inv @ dev)
        du = 0.5 * torch.trace(inv) - 0.5 * (inv @ dev).square().sum()
        assert s.grad_t[i].item() == pytest.approx(du.item(), rel=1e-10)
    assert g.entropy() == pytest.approx(0.5 * torch.logdet(2 * math.pi * math.e * cov).item())


def test_mixture_closed_form_scores_match_autograd(mixture):
    y = mixture.sample(64, torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.logspace(-4, 2, 64, dtype=torch.float64)
    exact = mixture.scores(y, t)
    auto = Energy.scores(mixture, y, t)  # the generic autograd path on the exact energy
    assert torch.allclose(exact.energy, auto.energy)
    assert torch.allclose(exact.grad_y, auto.grad_y, rtol=1e-9, atol=1e-9)
    assert torch.allclose(exact.grad_t, auto.grad_t, rtol=1e-9, atol=1e-9)


def test_mixture_is_normalized_in_1d():
    m = toy.GaussianMixture([0.3, 0.7], [[-1.0], [2.0]], [0.2, 1.5])
    y = torch.linspace(-40, 40, 80001, dtype=torch.float64)[:, None]
    for t in (0.0, 0.5, 10.0):
        p = torch.exp(-m.energy(y, torch.full((80001,), t, dtype=torch.float64)))
        assert torch.trapezoid(p, y[:, 0]).item() == pytest.approx(1.0, abs=1e-6)


def test_samples_have_the_mixture_moments(mixture):
    x = mixture.sample(200_000, torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(x.mean(0), mixture.mean(), atol=0.02)
    assert torch.allclose(torch.cov(x.T), mixture.covariance(), atol=0.03)


def test_scale_mixture_entropy_matches_paper():
    # The paper's Figure 1 density in d = 1000: true cross-entropy 2.111 nats/dim.
    m = toy.scale_mixture(1000)
    h, se = m.entropy_mc(20_000, torch.Generator().manual_seed(0))
    assert h / 1000 == pytest.approx(2.111, abs=0.003)
    assert se / 1000 < 0.001


def test_gaussian_d_eff_closed_form():
    g = toy.Gaussian(torch.zeros(3), torch.diag(torch.tensor([0.1, 1.0, 5.0])))
    x = g.sample(100_000, torch.Generator().manual_seed(2), dtype=torch.float64)
    for t in (0.01, 1.0, 30.0):
        assert g.d_eff(x, t).mean().item() == pytest.approx(g.mean_d_eff(t), rel=0.01)


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="positive definite"):
        toy.Gaussian(torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="weights must be 2 positive"):
        toy.GaussianMixture([1.0, -1.0], [[0.0], [1.0]], [1.0, 1.0])
    with pytest.raises(ValueError, match="symmetric"):
        toy.Gaussian(torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]]))


def test_uniform_box_log_prob():
    x = torch.tensor([[0.2, 0.9], [0.5, 1.2]])
    assert toy.uniform_box_log_prob(x).tolist() == [0.0, -math.inf]
