import pytest
import torch

from dsm.core import models, toy
from dsm.core.energy import ENERGY_FORMS, EnergyModel, ScoreModel
from dsm.core.nets.mlp import MLP
from dsm.core.validate import NonFiniteError

D = 5


def _model(form, **kw):
    torch.manual_seed(0)
    m = models.mlp_energy(D, form=form, t_min=1e-4, t_max=1e3, width=32, depth=2, **kw).double()
    # move away from the zero-initialised output layers so every path is exercised
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("form", ENERGY_FORMS)
def test_scores_match_finite_differences(form):
    m = _model(form)
    g = torch.Generator().manual_seed(1)
    y = torch.randn(6, D, generator=g, dtype=torch.float64)
    t = torch.logspace(-3, 2, 6, dtype=torch.float64)
    s = m.scores(y, t)
    eps = 1e-6
    for i in range(D):
        e = torch.zeros(D, dtype=torch.float64)
        e[i] = eps
        fd = (m.energy(y + e, t) - m.energy(y - e, t)) / (2 * eps)
        assert torch.allclose(s.grad_y[:, i], fd, rtol=1e-5, atol=1e-6)
    h = t * 1e-6
    fd_t = (m.energy(y, t + h) - m.energy(y, t - h)) / (2 * h)
    assert torch.allclose(s.grad_t, fd_t, rtol=1e-4, atol=1e-5)
    assert torch.allclose(s.denoised(y, t), y - t[:, None] * s.grad_y)
    assert torch.allclose(m.denoise(y, t), s.denoised(y, t))


def test_scores_come_from_one_autograd_call(monkeypatch):
    m = _model("inner+c")
    calls = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    m.scores(torch.randn(3, D, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    assert len(calls) == 1


def test_scores_are_differentiable_for_training():
    m = _model("inner")
    y, t = torch.randn(4, D, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    s = m.scores(y, t, create_graph=True)
    assert s.grad_y.requires_grad and s.grad_t.requires_grad
    (s.grad_y.square().sum() + s.grad_t.square().sum()).backward()
    assert all(p.grad is not None for p in m.backbone.parameters())
    s = m.scores(y, t)
    assert not s.grad_y.requires_grad and not s.energy.requires_grad


@pytest.mark.parametrize("sigma_data", [None, 0.5])
def test_inner_form_vanishes_at_origin(sigma_data):
    m = _model("inner", sigma_data=sigma_data)
    t = torch.logspace(-12, 4, 17, dtype=torch.float64)
    assert (m.energy(torch.zeros(17, D, dtype=torch.float64), t) == 0).all()
    assert not (_model("inner+c").energy(torch.zeros(17, D, dtype=torch.float64), t) == 0).all()


def test_homogeneous_relu_backbone_is_homogeneous():
    torch.manual_seed(0)
    net = MLP(D, D, t_min=1e-4, t_max=1e3, width=32, depth=3, homogeneous=True, activation="relu").double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    m = EnergyModel(net, (D,), form="inner", sigma_data=1.0).double()
    y, t = torch.randn(8, D, dtype=torch.float64), torch.logspace(-3, 2, 8, dtype=torch.float64)
    for a in (0.1, 3.0, 100.0):
        assert torch.allclose(net(a * y, t), a * net(y, t), rtol=1e-10, atol=1e-12)
        assert torch.allclose(m.energy(a * y, t), a**2 * m.energy(y, t), rtol=1e-10)


def test_defined_at_zero_and_below_t_min():
    m = _model("inner+c")
    x = torch.randn(4, D, dtype=torch.float64)
    zero = torch.zeros(4, dtype=torch.float64)
    u0 = m.energy(x, zero)
    assert torch.isfinite(u0).all()
    # below t_min the embedding is frozen; only the smooth preconditioning moves, by O(t)
    assert torch.allclose(m.energy(x, torch.full((4,), 1e-12, dtype=torch.float64)), u0, rtol=1e-9)
    assert torch.isfinite(m.scores(x, zero).grad_y).all()
    assert torch.isfinite(m.log_prob(x)).all()


def test_log_prob_uses_log_z():
    g = toy.Gaussian(torch.zeros(2), torch.eye(2))
    x = torch.randn(3, 2, dtype=torch.float64)
    before = g.log_prob(x)
    g.log_z.fill_(2.0)
    assert torch.allclose(g.log_prob(x), before - 2.0)


def test_bad_inputs_are_named():
    m = _model("inner")
    with pytest.raises(ValueError, match=r"y must have shape \(B, 5\), got \(3, 4\)"):
        m.scores(torch.zeros(3, 4, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="t has 2 entries but the batch has 3"):
        m.scores(torch.zeros(3, D, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="must be >= 0"):
        m.scores(torch.zeros(3, D, dtype=torch.float64), -torch.ones(3, dtype=torch.float64))
    y = torch.zeros(3, D, dtype=torch.float64)
    y[1, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="y contains 1 NaN"):
        m.scores(y, torch.ones(3, dtype=torch.float64))
    with pytest.raises(NonFiniteError, match="y contains"):
        m.log_prob(y)
    with pytest.raises(ValueError, match="energy form must be one of"):
        EnergyModel(torch.nn.Identity(), (D,), form="quadratic")
    with pytest.raises(ValueError, match="needs a c_net"):
        EnergyModel(torch.nn.Identity(), (D,), form="inner+c")


def test_score_model_denoiser():
    torch.manual_seed(0)
    sm = models.mlp_score_model(D, t_min=1e-4, t_max=1e3, width=16, depth=1)
    y, t = torch.randn(4, D), torch.rand(4) + 0.1
    assert torch.allclose(sm.denoise(y, t), y - t[:, None] * sm.score(y, t))
    # zero-initialised output + skip: the initial score is the Gaussian reference y / (1 + t)
    assert torch.allclose(sm.score(y, t), y / (1 + t[:, None]), atol=1e-6)
    assert isinstance(sm, ScoreModel)


def test_additive_normalization_adds_the_gaussian_log_t():
    """U += (d/2) log max(t, t_floor): on a backbone that outputs 0 that is all of U, and
    dU/dt = d / (2 t) above the floor."""
    m = models.unet_energy(1, 8, "tiny", additive_normalization=True, t_min=1e-4).double()
    y = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([0.0, 1e-6, 0.5, 300.0], dtype=torch.float64)
    s = m.scores(y, t)
    want = 32 * torch.log(t.clamp_min(1e-4))
    torch.testing.assert_close(s.energy, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.grad_t[2:], 32 / t[2:], rtol=1e-12, atol=0)
    assert (s.grad_t[:2] == 0).all()  # below the floor U no longer moves with t
    with pytest.raises(ValueError, match="additive_normalization needs t_floor > 0"):
        EnergyModel(torch.nn.Identity(), (2,), additive_normalization=True)
