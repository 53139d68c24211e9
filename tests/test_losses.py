import math

import pytest
import torch

from dsm import toy
from dsm.energy import Energy, ScoreModel
from dsm.losses import Denoising, DualScoreMatching, loss_by_band


class Perturbed(Energy):
    """An exact energy plus a perturbation, for testing that the truth minimizes the losses."""

    def __init__(self, base: Energy, kind: str, eps: float):
        super().__init__(base.event_shape)
        self.base, self.kind, self.eps = base, kind, eps

    def energy(self, y, t):
        u = self.base.energy(y, t)
        if self.kind == "scale":  # wrong spatial score
            return u * (1 + self.eps)
        if self.kind == "quadratic":  # wrong spatial score, differently
            return u + self.eps * y.square().sum(1) / (1 + t)
        if self.kind == "c_of_t":  # spurious c(t): same spatial score, wrong time score
            return u + self.eps * torch.log1p(t)
        raise ValueError(self.kind)


@pytest.fixture(scope="module")
def batch():
    m = toy.anisotropic_mixture(4, n_components=3, seed=2)
    n = 40_000
    g = torch.Generator().manual_seed(0)
    x = m.sample(n, g, dtype=torch.float64)
    t = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(1e-3), math.log(1e2), generator=g))
    z = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return m, x, t, z


def _paired_diff(loss, a, b, x, t, z, term):
    """Mean and standard error of loss(b) - loss(a) on the same (x, t, z)."""
    da = getattr(loss(a, x, t, z), term)
    db = getattr(loss(b, x, t, z), term)
    diff = db - da
    return float(diff.mean()), float(diff.std() / math.sqrt(len(diff)))


@pytest.mark.parametrize("kind", ["scale", "quadratic", "c_of_t"])
@pytest.mark.parametrize("eps", [0.05, -0.05])
def test_true_energy_minimizes_both_losses(batch, kind, eps):
    m, x, t, z = batch
    loss = DualScoreMatching()
    with torch.no_grad():
        diff, se = _paired_diff(loss, m, Perturbed(m, kind, eps), x, t, z, "total")
    assert diff > 4 * se, f"perturbation {kind} {eps:+} lowered or did not raise the loss: {diff} +- {se}"


def test_spurious_c_of_t_leaves_dsm_unchanged_and_raises_tsm(batch):
    m, x, t, z = batch
    loss = DualScoreMatching()
    with torch.no_grad():
        a, b = loss(m, x, t, z), loss(Perturbed(m, "c_of_t", 3.0), x, t, z)
    assert torch.allclose(a.dsm, b.dsm, rtol=1e-9, atol=1e-12)
    diff = b.tsm - a.tsm
    assert diff.mean() > 10 * diff.std() / math.sqrt(len(diff))


def test_single_score_matching_is_blind_to_c_of_t(batch):
    m, x, t, z = batch
    loss = DualScoreMatching(tsm_weight=0.0)
    with torch.no_grad():
        a, b = loss(m, x, t, z), loss(Perturbed(m, "c_of_t", 3.0), x, t, z)
    assert torch.equal(a.total, a.dsm) and (a.tsm == 0).all()
    assert torch.allclose(a.total, b.total, rtol=1e-9, atol=1e-12)


def test_weighted_terms_match_the_definitions(batch):
    m, x, t, z = batch
    x, t, z = x[:64], t[:64], z[:64]
    d = 4
    y = x + t.sqrt()[:, None] * z
    s = m.scores(y, t)
    l_dsm = (s.grad_y - (y - x) / t[:, None]).square().sum(1)
    l_tsm = (s.grad_t - d / (2 * t) + (y - x).square().sum(1) / (2 * t**2)) ** 2
    for a, b, lam in [(1, 2, 1.0), (0, 0, 0.5), (1.5, 1, 2.0)]:
        out = DualScoreMatching(tsm_weight=lam, dsm_exponent=a, tsm_exponent=b)(m, x, t, z)
        assert torch.allclose(out.dsm, (t / d) ** a * l_dsm, rtol=1e-8)
        assert torch.allclose(out.tsm, (t / d) ** b * l_tsm, rtol=1e-8)
        assert torch.allclose(out.total, out.dsm + lam * out.tsm)
    # the paper's weighting in denoiser form: (t/d) l_DSM = ||D - x||^2 / (d t)
    out = DualScoreMatching()(m, x, t, z)
    assert torch.allclose(out.dsm, (s.denoised(y, t) - x).square().sum(1) / (d * t), rtol=1e-8)


class _ExactScoreNet(torch.nn.Module):
    def __init__(self, energy):
        super().__init__()
        self.energy = energy

    def forward(self, y, t):
        return self.energy.scores(y, t).grad_y


def test_denoising_loss_of_exact_score_equals_dsm(batch):
    m, x, t, z = batch
    sm = ScoreModel(_ExactScoreNet(m), m.event_shape)
    with torch.no_grad():
        assert torch.allclose(Denoising()(sm, x, t, z).total, DualScoreMatching()(m, x, t, z).dsm, rtol=1e-9)


def test_negative_tsm_weight_is_rejected():
    with pytest.raises(ValueError, match="tsm_weight"):
        DualScoreMatching(tsm_weight=-1)


def test_loss_by_band():
    t = torch.tensor([1e-3, 2e-3, 0.5, 5.0, 50.0])
    v = torch.tensor([1.0, 3.0, 5.0, 7.0, 9.0])
    out = loss_by_band(t, v, [1e-4, 1e-2, 1.0, 100.0])
    assert out == {"[0.0001,0.01)": (2.0, 2), "[0.01,1)": (5.0, 1), "[1,100)": (8.0, 2)}
