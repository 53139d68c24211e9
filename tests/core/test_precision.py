"""Precision scopes: TF32 switches set and restored, bf16 autocast around the network body only,
and the energy's reductions in float32 whatever the body ran in."""

import typing

import numpy as np
import pytest
import torch
from torch import nn

from dsm.core.energy import EnergyModel
from dsm.core.precision import PRECISIONS, Precision, device_kind, precision_scope, tf32_flags
from dsm.scoring.cli import PRECISION_CHOICES
from dsm.scoring.columns import ScoreSpec, score_batch
from tests.models import perturbed_smoke_unet


@pytest.fixture
def restore_tf32():
    saved = tf32_flags()
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _set(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def test_the_names_agree():
    assert typing.get_args(Precision) == PRECISIONS == PRECISION_CHOICES == ("fp32", "tf32", "bf16")
    assert device_kind("cpu") == device_kind(torch.device("cpu")) == "cpu"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("before", [(False, False), (True, True), (False, True)])
def test_tf32_switches_are_set_inside_and_restored_after(precision, before, restore_tf32):
    _set(*before)
    with precision_scope(precision, "cpu"):
        on = precision == "tf32"
        assert tf32_flags() == (on, on)
        # the state torch's kernels read (the per-operator setting) agrees with the switches
        assert torch.backends.cuda.matmul.fp32_precision == ("tf32" if on else "ieee")
        assert torch.is_autocast_enabled("cpu") == (precision == "bf16")
    assert tf32_flags() == before


@pytest.mark.parametrize("precision", PRECISIONS)
def test_restored_after_an_exception(precision, restore_tf32):
    _set(True, False)  # a state no scope sets, so that a missed restore shows
    with pytest.raises(RuntimeError, match="inside"):
        with precision_scope(precision, "cpu"):
            raise RuntimeError("inside")
    assert tf32_flags() == (True, False) and not torch.is_autocast_enabled("cpu")


def test_unknown_precision_names_the_allowed_ones():
    with pytest.raises(ValueError, match="fp32.*tf32.*bf16.*'fp16'"):
        with precision_scope("fp16", "cpu"):
            pass
    with pytest.raises(ValueError, match="precision"):
        ScoreSpec(precision="fp16")


def test_fp32_inside_bf16_is_fp32():
    """Evaluation inside a bf16 region (as rank 0's evaluation could be) runs without autocast."""
    lin = nn.Linear(4, 4)
    x = torch.randn(3, 4)
    with precision_scope("bf16", "cpu"):
        assert lin(x).dtype == torch.bfloat16
        with precision_scope("fp32", "cpu"):
            assert lin(x).dtype == torch.float32
        assert lin(x).dtype == torch.bfloat16


def _unet_energy() -> EnergyModel:
    """The smoke config's tiny UNet energy (inner+c), moved off its zero-initialised output layers."""
    return perturbed_smoke_unet()[0].eval()


def _digits_like(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g), torch.logspace(-4, 3, n)


def test_fp32_scope_is_identical_to_no_scope():
    model, (x, t) = _unet_energy(), _digits_like()
    plain = model.scores(x, t)
    with precision_scope("fp32", "cpu"):
        scoped = model.scores(x, t)
    for a, b in [(plain.energy, scoped.energy), (plain.grad_y, scoped.grad_y), (plain.grad_t, scoped.grad_t)]:
        assert torch.equal(a, b)


def test_bf16_runs_the_body_in_bf16_and_u_in_fp32():
    model, (x, t) = _unet_energy(), _digits_like()
    seen = []
    model.backbone.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    reference = model.scores(x, t)
    with precision_scope("bf16", "cpu"):
        s = model.scores(x, t)
    assert seen == [torch.float32, torch.bfloat16]
    assert s.energy.dtype == s.grad_y.dtype == s.grad_t.dtype == torch.float32
    assert not torch.equal(s.energy, reference.energy)  # bf16 really ran
    torch.testing.assert_close(s.energy, reference.energy, rtol=1e-2, atol=1e-2 * reference.energy.abs().mean().item())


class _Rounding(nn.Module):
    """f(y) = y through a 1x1 convolution: under bf16 autocast the output is y rounded to bf16."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.conv.weight)

    def forward(self, y, t):
        return self.conv(y)


def test_the_sum_over_pixels_is_float32_under_bf16():
    """256 x 256 pixels: a bf16 result carries 8 significant bits (~2e-3 relative). U must equal
    the float64 sum of y times the bf16-rounded body output to float32 accuracy."""
    model = EnergyModel(_Rounding(), (1, 256, 256), form="inner", scaling="none")
    g = torch.Generator().manual_seed(2)
    y = 1 + 0.3 * torch.randn(2, 1, 256, 256, generator=g)
    t = torch.full((2,), 0.1)
    with torch.no_grad(), precision_scope("bf16", "cpu"):
        u = model.energy(y, t)
    f16 = y.bfloat16().double()
    exact = 0.5 * (y.double() * f16).flatten(1).sum(1)
    assert u.dtype == torch.float32
    np.testing.assert_allclose(u.double().numpy(), exact.numpy(), rtol=2e-6)
    # the same inner product written as a matmul, which autocast runs in bf16: visibly off
    with torch.no_grad(), precision_scope("bf16", "cpu"):
        naive = 0.5 * (y.flatten(1)[:, None, :] @ y.flatten(1)[:, :, None]).reshape(2)
    assert naive.dtype == torch.bfloat16 and ((naive.double() - exact) / exact).abs().max() > 1e-4


def test_the_c_head_runs_in_float32_under_bf16():
    """U = inner + d c(t): c's bf16 rounding (~2e-3 relative) would be multiplied by d."""
    model, (x, t) = _unet_energy(), _digits_like()
    seen = []
    model.c_net.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    with torch.no_grad(), precision_scope("bf16", "cpu"):
        model.energy(x, t)
    assert seen == [torch.float32]


def test_score_batch_at_bf16_agrees_with_fp32():
    model, (x, _) = _unet_energy(), _digits_like(8)
    x = torch.round(x * 255) / 255
    keys = [f"k{i}" for i in range(8)]
    fp32 = score_batch(model, x, keys, ScoreSpec(t_grid=(0.01,), n_noise=2), eight_bit=True)
    bf16 = score_batch(model, x, keys, ScoreSpec(t_grid=(0.01,), n_noise=2, precision="bf16"), eight_bit=True)
    assert set(bf16) == set(fp32)
    assert not np.array_equal(bf16["logp_nats"], fp32["logp_nats"])
    np.testing.assert_allclose(bf16["nll_bpd"], fp32["nll_bpd"], atol=0.05)
    assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_training_step_at_each_precision(precision):
    """The double backward of dual score matching goes through autocast: the loss is finite and
    near the fp32 one (same weights, same (t, z) draws), and the weights stay float32."""
    from dsm.core.losses import DualScoreMatching
    from dsm.core.noise import make_t_sampler
    from dsm.core.step import train_step

    x, _ = _digits_like(16)
    losses = {}
    for p in ("fp32", precision):
        model = _unet_energy().train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        with precision_scope(p, "cpu"):
            res = train_step(model, opt, DualScoreMatching(), x, make_t_sampler("log_uniform", 1e-4, 1e3),
                             generator=torch.Generator().manual_seed(0))
        assert res.finite and all(q.dtype == torch.float32 for q in model.parameters())
        losses[p] = res.loss
    assert losses[precision] == pytest.approx(losses["fp32"], rel=5e-2)
    assert (losses[precision] == losses["fp32"]) == (precision != "bf16")
