import pytest
import torch

from dsm.core import toy
from dsm.core.normalize import DataMoments
from dsm.core.ode import laplacian, ode_log_prob


@pytest.fixture(scope="module")
def mixture():
    return toy.anisotropic_mixture(3, n_components=3, seed=6, scale_range=(0.2, 0.8))


@pytest.fixture(scope="module")
def prior(mixture):
    return DataMoments.of(mixture.sample(20000, torch.Generator().manual_seed(0), dtype=torch.float64))


def test_laplacian_exact_and_hutchinson():
    g = toy.Gaussian(torch.zeros(4), torch.diag(torch.tensor([0.5, 1.0, 2.0, 4.0])))
    y = torch.randn(5, 4, dtype=torch.float64)
    t = torch.full((5,), 0.5, dtype=torch.float64)
    expect = (1 / (torch.tensor([0.5, 1.0, 2.0, 4.0]) + 0.5)).sum().item()
    _, lap, n = laplacian(g, y, t)
    assert torch.allclose(lap, torch.full((5,), expect, dtype=torch.float64)) and n == 5
    probes = torch.randint(0, 2, (200, 5, 4), generator=torch.Generator().manual_seed(0)).double() * 2 - 1
    _, per_probe, _ = laplacian(g, y, t, probes)
    # diagonal Hessian: Rademacher probes give the trace exactly
    assert torch.allclose(per_probe, torch.full((200, 5), expect, dtype=torch.float64))


def test_ode_matches_exact_log_prob(mixture, prior):
    x = mixture.sample(16, torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = mixture.log_prob(x)
    res = ode_log_prob(mixture, x, prior=prior, steps=192)
    assert (res.log_prob - exact).abs().max() < 0.03
    assert res.nfe == 1 + 2 * 192 and res.grad_evals == res.nfe * 4


def test_hutchinson_is_unbiased_and_its_error_bar_calibrated(mixture, prior):
    x = mixture.sample(64, torch.Generator().manual_seed(2), dtype=torch.float64)
    res = ode_log_prob(mixture, x, prior=prior, steps=192, trace="hutchinson", n_probes=8)
    err = res.log_prob - mixture.log_prob(x)
    assert (res.stderr > 0).all()
    # unbiased: the mean error over examples is within its own standard error
    assert abs(err.mean()) < 4 * (res.stderr.square().mean() / len(err)).sqrt() + 0.01
    # calibrated: standardized errors have RMS ~ 1 (an 8-probe error bar is itself noisy)
    rms_z = (err / res.stderr).square().mean().sqrt().item()
    assert 0.5 < rms_z < 1.8


def test_bad_input(mixture, prior):
    x = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="t_start < t_end"):
        ode_log_prob(mixture, x, prior=prior, t_start=10.0, t_end=1.0)
    with pytest.raises(ValueError, match="trace"):
        ode_log_prob(mixture, x, prior=prior, trace="skilling")


def test_ode_at_t_start_is_the_noisy_density(mixture, prior):
    """to_zero=False: log p(x, t_start) itself, which the exact energy gives in closed form."""
    x = mixture.sample(16, torch.Generator().manual_seed(3), dtype=torch.float64)
    t = torch.full((16,), 0.05, dtype=torch.float64)
    res = ode_log_prob(mixture, x, prior=prior, t_start=0.05, steps=192, to_zero=False)
    assert (res.log_prob + mixture.energy(x, t)).abs().max() < 0.03
    assert res.nfe == 2 * 192  # no evaluation for the [0, t_start] stretch
