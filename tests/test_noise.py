import math

import pytest
import torch

from dsm import noise
from dsm.validate import NonFiniteError


def test_conversions_round_trip():
    t = torch.logspace(-9, 3, 13, dtype=torch.float64)
    assert torch.allclose(noise.psnr_to_t(noise.t_to_psnr(t)), t, rtol=1e-12)
    assert torch.allclose(noise.sigma_to_t(noise.t_to_sigma(t)), t, rtol=1e-12)
    assert noise.t_to_psnr(1e-9) == pytest.approx(90.0)
    assert noise.t_to_psnr(1e3) == pytest.approx(-30.0)
    assert noise.psnr_to_t(20.0) == pytest.approx(0.01)


def test_add_noise_variance():
    x = torch.zeros(20000, 3)
    t = torch.full((20000,), 4.0)
    y, z = noise.add_noise(x, t, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(y, 2 * z)
    assert y.var().item() == pytest.approx(4.0, rel=0.03)


@pytest.mark.parametrize("name", sorted(noise.T_SAMPLERS))
def test_samplers_are_log_uniform(name):
    s = noise.make_t_sampler(name, 1e-9, 1e3)
    t = s(20000, generator=torch.Generator().manual_seed(0))
    assert t.shape == (20000,) and t.dtype == torch.float32
    assert (t >= 1e-9 * 0.999).all() and (t <= 1e3 * 1.001).all()
    u = (t.double().log() - math.log(1e-9)) / (math.log(1e3) - math.log(1e-9))
    # uniform in log t: mean 1/2, variance 1/12, and each decile holds ~10%
    assert u.mean().item() == pytest.approx(0.5, abs=0.01)
    assert u.var().item() == pytest.approx(1 / 12, rel=0.05)
    counts = torch.histc(u.float(), bins=10, min=0, max=1)
    assert (counts / 20000 - 0.1).abs().max() < 0.015


def test_sampler_errors_name_the_problem():
    with pytest.raises(ValueError, match="t_min must be < t_max"):
        noise.make_t_sampler("log_uniform", 1.0, 1.0)
    with pytest.raises(ValueError, match="t_min must be a positive"):
        noise.make_t_sampler("log_uniform", 0.0, 1.0)
    with pytest.raises(ValueError, match="unknown t sampler 'cosine'"):
        noise.make_t_sampler("cosine", 1e-3, 1.0)


def test_check_t_errors():
    with pytest.raises(ValueError, match=r"must be > 0"):
        noise.check_t(torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"must be >= 0"):
        noise.check_t(torch.tensor([-1.0]), allow_zero=True)
    with pytest.raises(NonFiniteError, match="t contains 1 NaN"):
        noise.check_t(torch.tensor([float("nan"), 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        noise.check_t(torch.ones(2, 2))
    with pytest.raises(ValueError, match="3 entries but the batch has 2"):
        noise.check_t(torch.ones(3), batch=2)
