import math

import pytest
import torch

from dsm.core import noise
from dsm.core.validate import NonFiniteError


def test_conversions_round_trip():
    t = torch.logspace(-9, 3, 13, dtype=torch.float64)
    assert torch.allclose(noise.psnr_to_t(noise.t_to_psnr(t)), t, rtol=1e-12)
    assert torch.allclose(noise.sigma_to_t(noise.t_to_sigma(t)), t, rtol=1e-12)
    assert noise.t_to_psnr(1e-9) == pytest.approx(90.0)
    assert noise.t_to_psnr(1e3) == pytest.approx(-30.0)
    assert noise.psnr_to_t(20.0) == pytest.approx(0.01)


def test_output_psnr_conventions_by_hand():
    # Two images with per-pixel MSE 1e-2 and 1e-4: PSNRs 20 and 40 dB.
    mse = [1e-2, 1e-4]
    # The paper's (Table 1): the PSNR of the mean MSE, -10 log10(5.05e-3) = 22.967 dB.
    assert noise.psnr_of_mean_mse(mse) == pytest.approx(-10 * math.log10(5.05e-3), abs=1e-12)
    assert noise.psnr_of_mean_mse(mse) == pytest.approx(22.9671, abs=1e-4)
    # The mean of the per-image PSNRs, (20 + 40) / 2.
    assert noise.mean_psnr_per_image(torch.tensor(mse, dtype=torch.float64)) == pytest.approx(30.0, abs=1e-12)
    # Equal MSEs: the two agree; a zero MSE is floored, not infinite.
    assert (noise.psnr_of_mean_mse([1e-3] * 3) == pytest.approx(noise.mean_psnr_per_image([1e-3] * 3))
            == pytest.approx(30))
    assert noise.psnr_of_mean_mse([0.0, 0.0]) == pytest.approx(200.0)


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


def _adapted_sampler(loss_of_t, steps: int = 60, **kw) -> noise.LossSecondMoment:
    s = noise.LossSecondMoment(1e-4, 1e2, bins=8, decay=0.9, warmup=5, **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        t = s(256, generator=g)
        s.observe(t, loss_of_t(t))
    return s


def test_importance_sampler_adapts_and_stays_unbiased():
    # A loss that is large at small t only: sampling must concentrate there, and the weighted
    # mean must still estimate the log-uniform expectation (computed on a fine grid).
    def loss_of_t(t):
        return 1.0 / (1.0 + t.double() * 100)

    s = _adapted_sampler(loss_of_t)
    p = s.probabilities()
    assert p[0] > 2.5 / 8 and p[-1] < 0.5 / 8, p  # adapted toward small t, uniform share kept
    assert p.sum().item() == pytest.approx(1.0)
    grid = torch.exp(torch.linspace(math.log(1e-4), math.log(1e2), 200_001, dtype=torch.float64))
    exact = loss_of_t(grid).mean().item()
    g = torch.Generator().manual_seed(2)
    est, plain = [], []
    for _ in range(200):
        t = s(512, generator=g)
        est.append((s.weights(t).double() * loss_of_t(t)).mean().item())
        tu = noise.LogUniform(1e-4, 1e2)(512, generator=g)
        plain.append(loss_of_t(tu).mean().item())
    est, plain = torch.tensor(est), torch.tensor(plain)
    se = est.std().item() / math.sqrt(len(est))
    assert abs(est.mean().item() - exact) < 4 * se + 1e-4
    assert est.std() < 0.8 * plain.std()  # the point of it: lower variance per batch


def test_importance_sampler_uniform_during_warmup_and_state_round_trip():
    s = noise.LossSecondMoment(1e-3, 1e1, bins=4, warmup=3)
    assert torch.allclose(s.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))
    t = s(64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(s.weights(t), torch.ones(64))
    a = _adapted_sampler(lambda t: t.double().log().abs())
    b = noise.LossSecondMoment(1e-4, 1e2, bins=8, decay=0.9, warmup=5)
    b.load_state_dict(a.state_dict())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(a(100, generator=g1), b(100, generator=g2))
    with pytest.raises(ValueError, match="bins"):
        noise.LossSecondMoment(1e-4, 1e2, bins=4).load_state_dict(a.state_dict())


def test_importance_sampler_all_reduce_gives_every_rank_the_same_state():
    # Two "ranks" that see different losses, joined by a sum: both end with the pooled state.
    r0, r1, pooled = (noise.LossSecondMoment(1e-4, 1e2, bins=4, warmup=1) for _ in range(3))
    t0, t1 = torch.tensor([1e-3, 1e1]), torch.tensor([2e-3, 5e1])
    l0, l1 = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    s0 = torch.zeros(2, 4, dtype=torch.float64)

    def sums(s, t, loss):
        out = torch.zeros(2, 4, dtype=torch.float64)
        out[0].index_add_(0, s._bin(t), loss.double().square())
        out[1].index_add_(0, s._bin(t), torch.ones(len(t), dtype=torch.float64))
        return out

    total = sums(r0, t0, l0) + sums(r1, t1, l1) + s0
    r0.observe(t0, l0, all_reduce=lambda v: total)
    r1.observe(t1, l1, all_reduce=lambda v: total)
    pooled.observe(torch.cat([t0, t1]), torch.cat([l0, l1]))
    assert torch.equal(r0.second_moment, pooled.second_moment) and torch.equal(r1.count, pooled.count)
