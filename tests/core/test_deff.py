import math

import pytest
import torch

from dsm.core import toy
from dsm.core.deff import d_eff


@pytest.fixture(scope="module")
def gaussian():
    return toy.Gaussian(torch.zeros(6), torch.diag(torch.tensor([0.01, 0.1, 0.5, 1.0, 3.0, 10.0])))


@pytest.mark.parametrize("t", [1e-3, 0.3, 5.0, 100.0])
def test_both_estimators_match_closed_form(gaussian, t):
    x = gaussian.sample(3000, torch.Generator().manual_seed(0), dtype=torch.float64)
    est = d_eff(gaussian, x, t, n_noise=8)
    exact = gaussian.d_eff(x, t)
    for name in ("denoising", "time"):
        v, se = getattr(est, name), getattr(est, f"{name}_stderr")
        # per example: within Monte Carlo error of the exact d_eff(x, t) (K = 8 gives heavy-tailed z)
        z = (v - exact) / se
        assert z.abs().mean() < 1.2 and (z.abs() > 5).float().mean() < 0.03, name
        # dataset mean: the exact sum_i lambda_i / (lambda_i + t)
        sem = v.std() / math.sqrt(len(v))
        assert abs(v.mean().item() - gaussian.mean_d_eff(t)) < 4 * sem.item() + 1e-3, name


def test_estimators_agree_on_a_mixture():
    m = toy.anisotropic_mixture(4, n_components=3, seed=1)
    x = m.sample(500, torch.Generator().manual_seed(1), dtype=torch.float64)
    for t in (0.01, 0.5):
        est = d_eff(m, x, t, n_noise=16)
        gap = est.denoising - est.time
        assert abs(gap.mean().item()) < 4 * gap.std().item() / math.sqrt(500)


def test_noise_is_keyed_per_example(gaussian):
    x = gaussian.sample(10, torch.Generator().manual_seed(2), dtype=torch.float64)
    keys = [f"img{i}" for i in range(10)]
    a = d_eff(gaussian, x, 0.1, n_noise=4, keys=keys, batch_size=40)
    b = d_eff(gaussian, x.flip(0), 0.1, n_noise=4, keys=keys[::-1], batch_size=4)
    assert torch.allclose(a.denoising, b.denoising.flip(0), rtol=1e-12)
    assert torch.allclose(a.time, b.time.flip(0), rtol=1e-12)


def test_bad_input(gaussian):
    x = torch.zeros(3, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="t > 0"):
        d_eff(gaussian, x, 0.0)
    with pytest.raises(ValueError, match="n_noise"):
        d_eff(gaussian, x, 1.0, n_noise=1)
    with pytest.raises(ValueError, match="2 keys for 3"):
        d_eff(gaussian, x, 1.0, keys=["a", "b"])
