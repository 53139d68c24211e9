import math

import pytest
import torch

from dsm.core import toy
from dsm.core.energy import Energy, ScoreModel
from dsm.core.losses import Denoising, DualScoreMatching, loss_by_band


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
    t = torch.tensor([1e-3, 2e-3, 0.5, 5.0, 100.0, 1e-5, 200.0])
    v = torch.tensor([1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0])
    out = loss_by_band(t, v, [1e-4, 1e-2, 1.0, 100.0])
    # bands are half-open but the last, which holds t = 100 itself; t outside the edges is dropped
    assert out == {0: (2.0, 2), 1: (5.0, 1), 2: (8.0, 2)}
    assert loss_by_band(t[:2], v[:2], [1e-4, 1e-2, 1.0, 100.0]) == {0: (2.0, 2)}  # empty bands left out


def test_heat_residual_is_zero_for_exact_families(batch):
    # Every exact p(., t) = p_0 * N(0, tI) obeys the heat equation: R = 0 pointwise with the
    # exact Laplacian, and in expectation with Hutchinson probes (docs/design.md section 2).
    from dsm.core.losses import heat_residual

    m, x, t, z = batch
    n = 2000
    y = x[:n] + t[:n].sqrt()[:, None] * z[:n]
    g = toy.Gaussian(torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64),
                     torch.diag(torch.tensor([2.0, 0.5, 1.0, 0.1], dtype=torch.float64)))
    for model in (m, g, Perturbed(m, "c_of_t", 0.0)):
        exact = heat_residual(model, y, t[:n], probes=None)
        assert exact.abs().max().item() < 1e-8
    hutch = heat_residual(m, y, t[:n], probes=4, generator=torch.Generator().manual_seed(0)) / 4
    se = hutch.std().item() / math.sqrt(hutch.numel())
    assert abs(hutch.mean().item()) < 4 * se
    assert hutch.std().item() > 0  # the probes do vary: the test can see noise


def test_heat_residual_sees_a_wrong_time_dependence(batch):
    # A spurious c(t) changes dU/dt and not the spatial terms: the residual becomes t c'(t).
    from dsm.core.losses import heat_residual

    m, x, t, z = batch
    n = 500
    y = x[:n] + t[:n].sqrt()[:, None] * z[:n]
    r = heat_residual(Perturbed(m, "c_of_t", 0.5), y, t[:n], probes=None)[:, 0]
    assert torch.allclose(r, 0.5 * t[:n] / (1 + t[:n]), atol=1e-8)
    r2 = heat_residual(Perturbed(m, "scale", 0.2), y, t[:n], probes=None)[:, 0]
    assert r2.abs().mean() > 0.01


def test_heat_regularizer_enters_training_loss_only(batch):
    m, x, t, z = batch
    n = 256
    xs, ts, zs = x[:n], t[:n], z[:n]
    plain = DualScoreMatching()
    heat = DualScoreMatching(heat_weight=1.0)
    # A diagonal Gaussian: Rademacher probes give its Laplacian exactly (v_i^2 = 1), so the
    # residual of the spurious c(t) is exactly t c'(t).
    diag = toy.Gaussian(torch.zeros(4, dtype=torch.float64), torch.diag(torch.tensor([2.0, 0.5, 1.0, 0.1],
                                                                                     dtype=torch.float64)))
    wrong = Perturbed(diag, "c_of_t", 0.5)
    wrong.train()
    on = heat(wrong, xs, ts, zs, generator=torch.Generator().manual_seed(0))
    off = plain(wrong, xs, ts, zs)
    expected = (0.5 * ts / (1 + ts) / 4) ** 2  # (t R / d)^2
    assert torch.allclose(on.heat, expected, rtol=1e-6, atol=1e-12)
    assert torch.allclose(on.total, off.total + on.heat)
    wrong.eval()
    assert heat(wrong, xs, ts, zs).heat is None
    assert heat.needs_generator and not plain.needs_generator
    with pytest.raises(ValueError, match="heat_weight"):
        DualScoreMatching(heat_weight=-1.0)


def test_single_score_matching_gives_every_parameter_a_gradient():
    # DDP requires a gradient for every parameter; with lambda = 0 the learned c(t) of the
    # inner+c form would get none (the DSM term only sees grad_y U), so it gets an exact zero.
    from dsm.core import models

    torch.manual_seed(0)
    model = models.mlp_energy(3, form="inner+c", t_min=1e-3, t_max=1e2, width=16, depth=2)
    x, z = torch.randn(8, 3), torch.randn(8, 3)
    t = torch.full((8,), 0.1)
    DualScoreMatching(tsm_weight=0.0)(model, x, t, z).total.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    c_params = [p for n, p in model.named_parameters() if n.startswith("c_net.")]
    assert c_params and all(float(p.grad.abs().max()) == 0.0 for p in c_params)
