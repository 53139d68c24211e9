import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from dsm.core import losses, models
from dsm.core.energy import EnergyModel
from dsm.core.nets.activations import FastGELU
from dsm.core.nets.conv import Conv2d
from dsm.core.nets.stock import with_stock_ops
from dsm.core.nets.unet import PRESETS, UNet, count_parameters, norm_factor, unet_config


def _perturbed(module, scale=0.05, seed=0):
    """Move every parameter off its initial value (the output conv and gains start at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


@pytest.mark.parametrize("preset", ["paper", "paper-dsm"])
@pytest.mark.parametrize("channels,count", [(3, 8_649_856), (1, 8_647_552)])
def test_paper_presets_have_the_published_size(preset, channels, count):
    assert count_parameters(UNet(unet_config(preset, channels=channels, image_size=64))) == count


def _official_forward(net: UNet, y: torch.Tensor, t: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The paper's UNet recomputed from its formulas, reusing only the weights and
    the wiring of ``net``: embedding [cos(t f), sin(t f)] with f = exp(-linspace(log 1, log 100,
    F)) in float32 and t unfloored; time MLP Linear-SiLU-Linear-SiLU; normalization factor
    sqrt(mean_c(var) / (var + eps) + eps) per channel."""
    n_freq = net.cfg.n_freq
    f = torch.exp(-torch.linspace(math.log(1.0), math.log(100.0), n_freq, dtype=torch.float32)).to(y.dtype)
    a = t[:, None] * f
    l0, l2 = net.time_mlp[0], net.time_mlp[2]
    emb = F.silu(F.linear(F.silu(F.linear(torch.cat([a.cos(), a.sin()], 1), l0.weight, l0.bias)), l2.weight, l2.bias))

    def layer(x, lay):
        c = lay.conv
        if isinstance(c, torch.nn.ConvTranspose2d):
            x = F.conv_transpose2d(x, c.weight, stride=c.stride)
        else:
            x = F.conv2d(x, c.weight, stride=c.stride, padding=c.padding)
        var = x.var(dim=(2, 3), unbiased=False)
        factor = torch.sqrt(var.mean(1, keepdim=True) / (var + eps) + eps)
        x = (x - x.mean((2, 3), keepdim=True)) * factor[:, :, None, None] * lay.norm.weight[:, None, None]
        x = x * (1 + F.linear(emb, lay.norm.cond.weight, lay.norm.cond.bias))[:, :, None, None]
        return F.gelu(x)

    h, skips = y, []
    for blk in net.encoder:
        for lay in blk:
            h = layer(h, lay)
        skips.append(h)
    for lay in net.middle:
        h = layer(h, lay)
    for blk, skip in zip(net.decoder, reversed(skips)):
        h = torch.cat([h, skip], 1)
        for lay in blk:
            h = layer(h, lay)
    return F.conv2d(h, net.out.weight, padding=net.out.padding)


@pytest.mark.parametrize("inputs", ["unit", "large"])
def test_paper_preset_is_the_official_function(inputs):
    """The `paper` preset at a tiny size against the formulas, at t from 0 to 1e3; dsm's
    variant (`paper-dsm`) on the same weights is a different function."""
    torch.manual_seed(3)
    size = dict(base_width=4, scales=2, convs_per_block=3, n_freq=8, emb_dim=16)
    net = _perturbed(UNet(unet_config("paper", channels=2, image_size=8, **size)), scale=0.2).double()
    y = torch.rand(5, 2, 8, 8, dtype=torch.float64)
    t = torch.tensor([0.0, 1e-9, 1e-2, 3.0, 1e3], dtype=torch.float64)
    if inputs == "large":
        y = 40 * y  # large inputs: the normalization's eps no longer matters, the embedding still does
    with torch.no_grad():
        ours, ref = net(y, t), _official_forward(net, y, t)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
        dsm_net = UNet(unet_config("paper-dsm", channels=2, image_size=8, **size)).double()
        dsm_net.load_state_dict(net.state_dict(), strict=False)  # its linear embedding has a freqs buffer
        assert (dsm_net(y, t) - ref).norm() > 1e-3 * ref.norm()


def test_official_norm_factor_by_hand():
    var = torch.tensor([[1.0, 3.0], [0.0, 0.0]], dtype=torch.float64)
    eps = 1e-5
    got = norm_factor(var, eps, "official")
    want = torch.tensor([[math.sqrt(2 / (1 + eps) + eps), math.sqrt(2 / (3 + eps) + eps)], [math.sqrt(eps)] * 2],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    rel = norm_factor(var, eps, "relative")  # dsm's: an all-zero input stays exactly 0
    torch.testing.assert_close(rel[0], torch.tensor([math.sqrt(2 / (1 + 2 * eps)), math.sqrt(2 / (3 + 2 * eps))],
                                                    dtype=torch.float64), rtol=1e-14, atol=0)
    with pytest.raises(ValueError, match="unknown norm_eps 'abs'"):
        unet_config("paper", norm_eps="abs")


def test_image_size_must_fit_the_depth():
    with pytest.raises(ValueError, match=r"image_size 28 is not divisible by 2\*\*scales = 8: use scales <= 2 .* 32"):
        unet_config("paper", image_size=28)
    with pytest.raises(ValueError, match="unknown UNet preset 'huge'"):
        unet_config("huge")
    unet_config("paper", image_size=28, scales=2)  # the suggested fix works
    with pytest.raises(ValueError, match="1x1 middle block.*use scales <= 2"):
        unet_config("paper", image_size=8)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("scaling", ["none", "inverse_t", "variance"])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_energy_vanishes_at_zero(preset, scaling, activation):
    m = _perturbed(models.unet_energy(1, 16, preset, scaling=scaling, activation=activation))
    t = torch.logspace(-12, 4, 5)
    assert (m.energy(torch.zeros(5, 1, 16, 16), t) == 0).all()
    s = m.scores(torch.zeros(5, 1, 16, 16), t)  # a black image has finite scores too
    assert torch.isfinite(s.grad_y).all() and torch.isfinite(s.grad_t).all()


def test_relu_unet_is_homogeneous():
    torch.manual_seed(0)
    net = _perturbed(UNet(unet_config("small", channels=1, image_size=8, activation="relu"))).double()
    m = EnergyModel(net, (1, 8, 8), form="inner", scaling="none").double()
    y = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    t = torch.logspace(-3, 2, 4, dtype=torch.float64)
    for a in (0.01, 0.5, 7.0):
        assert torch.allclose(net(a * y, t), a * net(y, t), rtol=1e-6, atol=1e-12)
        assert torch.allclose(m.energy(a * y, t), a**2 * m.energy(y, t), rtol=1e-6)


def test_gelu_unet_homogeneity_is_measured(capsys):
    torch.manual_seed(0)
    net = _perturbed(UNet(unet_config("small", channels=1, image_size=8))).double()
    y, t = torch.rand(16, 1, 8, 8, dtype=torch.float64), torch.full((16,), 0.1, dtype=torch.float64)
    with torch.no_grad():
        devs = {a: float((net(a * y, t) - a * net(y, t)).norm() / (a * net(y, t)).norm()) for a in (0.5, 2.0, 10.0)}
    with capsys.disabled():
        print("\nGELU UNet: relative deviation from homogeneity ||f(ay) - a f(y)|| / ||a f(y)||: "
              + ", ".join(f"a={a:g}: {d:.3g}" for a, d in devs.items()))
    assert all(math.isfinite(d) for d in devs.values()) and devs[2.0] > 0  # reported, not bounded


@pytest.mark.parametrize("scaling", ["none", "inverse_t"])
def test_scores_match_finite_differences(scaling):
    torch.manual_seed(1)
    m = _perturbed(models.unet_energy(1, 8, "tiny", scaling=scaling, form="inner+c", t_min=1e-3)).double()
    g = torch.Generator().manual_seed(2)
    y = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0.01, 0.3, 5.0], dtype=torch.float64)
    s = m.scores(y, t)
    v = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    eps = 1e-6
    fd = (m.energy(y + eps * v, t) - m.energy(y - eps * v, t)) / (2 * eps)
    assert torch.allclose((s.grad_y * v).flatten(1).sum(1), fd, rtol=1e-5, atol=1e-7)
    h = 1e-6 * t
    fd_t = (m.energy(y, t + h) - m.energy(y, t - h)) / (2 * h)
    assert torch.allclose(s.grad_t, fd_t, rtol=1e-4, atol=1e-6)


def test_score_baseline_shares_the_backbone():
    torch.manual_seed(0)
    sm = _perturbed(models.unet_score_model(1, 8, "tiny"))
    y, t = torch.rand(2, 1, 8, 8), torch.tensor([0.1, 1.0])
    assert torch.allclose(sm.denoise(y, t), y - t[:, None, None, None] * sm.backbone(y, t), atol=1e-6)
    e = models.unet_energy(1, 8, "tiny")
    assert count_parameters(sm.backbone) == count_parameters(e.backbone)


# ---------------------------------------------------------------- DDP (real processes)
def _global_batch():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(8, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.exp(torch.empty(8, dtype=torch.float64).uniform_(math.log(1e-3), math.log(10), generator=g))
    z = torch.randn(8, 1, 8, 8, generator=g, dtype=torch.float64)
    return x, t, z


def _model():
    torch.manual_seed(0)
    return _perturbed(models.unet_energy(1, 8, "tiny", t_min=1e-3)).double()


def _ddp_worker(rank: int, world: int, init_file: str, out: str):
    torch.set_num_threads(1)  # two processes on two cores (docs/design.md section 8)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model())
        x, t, z = _global_batch()
        shard = slice(rank * 4, rank * 4 + 4)
        loss = losses.DualScoreMatching()(model, x[shard], t[shard], z[shard]).total.mean()
        loss.backward()  # one plain backward; the input gradients used create_graph=True
        if rank == 0:
            torch.save({n: p.grad for n, p in model.module.named_parameters()}, out)
        dist.barrier()  # neither rank tears gloo down while the other still uses it (a rare SIGABRT in CI)
    finally:
        dist.destroy_process_group()


def test_ddp_gradients_equal_single_process(tmp_path):
    out = tmp_path / "grads.pt"
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "rendezvous"), str(out)), nprocs=2,
                       start_method="spawn", join=True)
    ddp = torch.load(out)
    model = _model()
    x, t, z = _global_batch()
    losses.DualScoreMatching()(model, x, t, z).total.mean().backward()
    single = {n: p.grad for n, p in model.named_parameters()}
    assert single.keys() == ddp.keys()
    for n, g in single.items():
        assert g is not None and ddp[n] is not None, n
        assert torch.allclose(ddp[n], g, rtol=1e-9, atol=1e-12), n
    assert any(g.abs().sum() > 0 for g in single.values())


def test_fast_ops_give_the_same_numbers():
    """The fast convolutions, GELU and normalization change speed, not results: an energy
    step's loss and parameter gradients equal those with stock PyTorch ops, and so do the
    third-order gradients of the heat regularizer."""

    def loss_and_grads(model, loss_fn):
        x, t, z = _global_batch()
        model.zero_grad()
        loss = loss_fn(model, x, t, z, generator=torch.Generator().manual_seed(1)).total.mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    fast_model = _model()
    stock_model = with_stock_ops(fast_model)
    assert not any(isinstance(m, (Conv2d, FastGELU)) for m in stock_model.modules())
    for loss_fn in (losses.DualScoreMatching(), losses.DualScoreMatching(heat_weight=1.0)):
        fast, ref = loss_and_grads(fast_model, loss_fn), loss_and_grads(stock_model, loss_fn)
        assert torch.allclose(fast[0], ref[0], rtol=1e-12)
        for n in ref[1]:
            assert torch.allclose(fast[1][n], ref[1][n], rtol=1e-9, atol=1e-14), n
