import math

import pytest
import torch

from dsm.core import toy
from dsm.core.energy import Energy
from dsm.core.normalize import DataMoments, estimate_log_z, log_z_agreement, normalize


class Shifted(Energy):
    """exp(-U - c): the same density with log Z = -c, plus an optional spurious c(t)."""

    def __init__(self, base, c=0.0, c_of_t=0.0):
        super().__init__(base.event_shape)
        self.base, self.c, self.c_of_t = base, c, c_of_t

    def energy(self, y, t):
        return self.base.energy(y, t) + self.c + self.c_of_t * torch.log(t.clamp_min(1e-12))


@pytest.fixture(scope="module")
def mixture():
    return toy.anisotropic_mixture(8, n_components=3, seed=3)


@pytest.fixture(scope="module")
def heldout(mixture):
    return mixture.sample(4000, torch.Generator().manual_seed(5), dtype=torch.float64)


def test_exact_density_has_log_z_zero(mixture, heldout):
    paired = estimate_log_z(mixture, heldout, 1e3, method="paired")
    plain = estimate_log_z(mixture, heldout, 1e3, method="plain")
    plain_var = estimate_log_z(mixture, heldout, 1e3, method="plain_data_var")
    for est in (paired, plain, plain_var):
        assert abs(est.value) < 4 * est.stderr + 1e-3, est
    # the control variate is what makes log Z usable: orders of magnitude less noise
    assert paired.stderr * 100 < plain.stderr
    assert plain.stderr == pytest.approx(math.sqrt(8 / 2) / math.sqrt(4000), rel=0.2)


def test_plain_is_the_official_formula_and_plain_data_var_corrects_its_bias():
    """plain: log Z = d/2 log(2 pi e t) - mean_i U(x_i + sqrt(t) z_i, t), the official code's formula.
    On an exact Gaussian N(mu, diag(lam)) (log Z = 0) its expectation is -1/2 sum log(1 + lam/t):
    visible at t = 1, negligible at the paper's t = 1e3."""
    lam = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    gauss = toy.Gaussian(torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=torch.float64), torch.diag(lam))
    x = gauss.sample(8000, torch.Generator().manual_seed(7), dtype=torch.float64)
    d, t = 4, 1.0
    plain = estimate_log_z(gauss, x, t, method="plain")
    # by hand: y ~ N(mu, lam + t), E U(y, t) = 1/2 sum log(2 pi (lam + t)) + d/2
    assert plain.stderr == pytest.approx(math.sqrt(d / 2 / 8000), rel=0.1)
    bias = -0.5 * math.log(1.5 * 2 * 3 * 5)  # -1/2 log 45 = -1.903 nats
    assert plain.value == pytest.approx(bias, abs=4 * plain.stderr)
    # the same noise, recomputed here from the formula
    from dsm.core.seeding import default_keys, keyed_normal
    z = keyed_normal(default_keys(len(x)), (d,), salt="log_z", dtype=x.dtype)
    u = gauss.energy(x + math.sqrt(t) * z, torch.full((len(x),), t, dtype=x.dtype))
    assert plain.value == pytest.approx(d / 2 * math.log(2 * math.pi * math.e * t) - float(u.mean()), abs=1e-9)
    # the data-variance variant removes that bias (to the sampling error of the variances)
    assert estimate_log_z(gauss, x, t, method="plain_data_var").value == pytest.approx(0.0, abs=4 * plain.stderr)
    # at t = 1e3 the official formula recovers log Z = 0 within its Monte Carlo error
    far = estimate_log_z(gauss, x, 1e3, method="plain")
    assert abs(far.value) < 4 * far.stderr
    assert -0.5 * float(torch.log1p(lam / 1e3).sum()) == pytest.approx(-0.00375, abs=1e-4)  # the bias left there


def test_shift_is_recovered_and_cancels_in_log_prob(mixture, heldout):
    shifted = Shifted(mixture, c=-7.25)
    est = normalize(shifted, heldout, 1e3)
    assert est.value == pytest.approx(7.25, abs=4 * est.stderr + 1e-3)
    assert float(shifted.log_z) == est.value
    x = heldout[:10]
    assert torch.allclose(shifted.log_prob(x), mixture.log_prob(x), atol=4 * est.stderr + 1e-3)


def test_agreement_diagnostic(mixture, heldout):
    good = log_z_agreement(mixture, heldout, [1e2, 3e2, 1e3])
    assert good.consistent and good.max_abs_diff < 0.01
    # a spurious c(t) means Z depends on t: the diagnostic must flag it
    bad = log_z_agreement(Shifted(mixture, c_of_t=0.05), heldout, [1e2, 3e2, 1e3])
    assert not bad.consistent
    assert bad.max_abs_diff == pytest.approx(0.05 * math.log(10), rel=0.05)


def test_estimates_do_not_depend_on_batch_size(mixture, heldout):
    a = estimate_log_z(mixture, heldout[:500], 1e3, batch_size=500)
    b = estimate_log_z(mixture, heldout[:500], 1e3, batch_size=64)
    assert a.value == pytest.approx(b.value, abs=1e-12)


def test_moments_and_reference(heldout):
    m = DataMoments.of(heldout)
    t = torch.full((3,), 2.0, dtype=torch.float64)
    y = heldout[:3]
    expect = torch.distributions.Normal(m.mean, (m.var + 2.0).sqrt()).log_prob(y).sum(1)
    assert torch.allclose(m.log_q(y, t), expect)


def test_bad_input(mixture, heldout):
    with pytest.raises(ValueError, match="t > 0"):
        estimate_log_z(mixture, heldout, 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        estimate_log_z(mixture, heldout[:1], 1e3)
    with pytest.raises(ValueError, match="method"):
        estimate_log_z(mixture, heldout, 1e3, method="exact")
    with pytest.raises(ValueError, match=r"y must have shape \(B, 8\)"):
        estimate_log_z(mixture, heldout[:, :4], 1e3)
    with pytest.raises(ValueError, match="two noise levels"):
        log_z_agreement(mixture, heldout, [1e3])
