"""dsm.core.sample driven by an exact Gaussian energy: the samples follow the Gaussian; seeding is exact."""

import numpy as np
import pytest
import torch

import dsm.api
from dsm.core import toy
from dsm.core.sample import sample, start_noise, t_schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")


MU = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64)


def _gaussian(seed: int = 0) -> toy.Gaussian:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64) * 0.3
    return toy.Gaussian(MU, a @ a.T + 0.02 * torch.eye(4, dtype=torch.float64))  # eigenvalues ~0.03 to ~1.2


def _within(x: torch.Tensor, gauss: toy.Gaussian, disc: float) -> tuple[bool, float]:
    """Mean and covariance of x (n, d) against the Gaussian's, allowing 4 Monte Carlo standard
    errors plus a discretization allowance ``disc`` (relative to the standard deviations).

    Standard errors: sample mean sqrt(S_ii / n); sample covariance sqrt((S_ii S_jj + S_ij^2) / n).
    Returns (ok, worst ratio of error to allowance)."""
    n = x.shape[0]
    cov = gauss.covariance()
    sd = cov.diag().sqrt()
    m_err = (x.mean(0) - gauss.mean()).abs()
    m_tol = 4 * sd / n ** 0.5 + disc * sd
    c_err = (torch.cov(x.T) - cov).abs()
    c_tol = 4 * ((sd[:, None] * sd[None]) ** 2 + cov ** 2).sqrt() / n ** 0.5 + disc * sd[:, None] * sd[None]
    worst = max(float((m_err / m_tol).max()), float((c_err / c_tol).max()))
    return worst < 1, worst


def test_schedule_is_geometric():
    ts = t_schedule(1e3, 1e-4, 7)
    assert ts[0] == pytest.approx(1e3) and ts[-1] == pytest.approx(1e-4) and len(ts) == 8
    np.testing.assert_allclose((ts[1:] / ts[:-1]).numpy(), 0.1, rtol=1e-12)


@pytest.mark.parametrize("eta, steps", [(0.0, 400), (1.0, 800)])
def test_gaussian_mean_and_covariance(eta, steps):
    # Discretization: on this Gaussian the deterministic scheme's covariance error is about
    # 8/steps relative (2 % at 400 steps), the ancestral one's about 30/steps (4 % at 800):
    # measured with n = 20000; the allowance adds that to 4 Monte Carlo standard errors.
    gauss = _gaussian()
    x = sample(gauss, 4000, seed=3, steps=steps, eta=eta, dtype=torch.float64, batch_size=4000)
    ok, worst = _within(x, gauss, disc=0.03 if eta == 0 else 0.05)
    assert ok, f"eta={eta}: error {worst:.2f} x the tolerance"
    # The same tolerance catches a too-coarse schedule: the test can fail.
    coarse = sample(gauss, 4000, seed=3, steps=5, eta=eta, dtype=torch.float64, batch_size=4000)
    assert not _within(coarse, gauss, disc=0.03)[0]


def test_seeding():
    gauss = _gaussian()
    a = sample(gauss, 50, seed=7, steps=20, batch_size=16)
    b = sample(gauss, 50, seed=7, steps=20, batch_size=50)  # batching does not matter
    assert torch.equal(a, b)
    assert not torch.equal(a, sample(gauss, 50, seed=8, steps=20))
    s1 = sample(gauss, 50, seed=7, steps=20, eta=1.0)
    assert torch.equal(s1, sample(gauss, 50, seed=7, steps=20, eta=1.0, batch_size=7))
    assert not torch.equal(s1, a)

    # Two different models, one seed: the same start noise, different samples.
    other = _gaussian(seed=1)
    starts = {}
    for name, energy in (("a", gauss), ("b", other)):
        got = []
        out = sample(energy, 50, seed=7, steps=20, mean=0.5, callback=lambda k, t, y, got=got: got.append(y.clone()))
        starts[name] = (got[0], out)
        assert len(got) == 21
    assert torch.equal(starts["a"][0], starts["b"][0])
    expect = (0.5 + 1e3 ** 0.5 * start_noise(50, (4,), 7)).float()
    assert torch.equal(starts["a"][0], expect)
    assert not torch.allclose(starts["a"][1], starts["b"][1])


def test_model_api_gives_the_data_shape():
    gauss = toy.Gaussian(torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64))
    model = dsm.api.Model(gauss, (1, 2, 2), eight_bit=True, normalized=True)
    x = sample(model, 6, seed=0, steps=5, mean=0.5)
    assert x.shape == (6, 1, 2, 2)
    with pytest.raises(ValueError):
        sample(gauss, 6, eta=2.0)
    with pytest.raises(ValueError):
        sample(gauss, 6, t_min=1.0, t_max=0.5)
