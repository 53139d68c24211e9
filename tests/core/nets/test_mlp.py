import pytest
import torch

from dsm.core.nets.mlp import MLP, TimeScalar


def _perturbed(net):
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net


def test_shapes_and_zero_init():
    net = MLP(4, 4, t_min=1e-3, t_max=1e2, width=16, depth=2)
    y, t = torch.randn(5, 4), torch.rand(5)
    assert torch.equal(net(y, t), y)  # zero-initialised output + skip = identity
    scalar = MLP(4, 1, t_min=1e-3, t_max=1e2, width=16, depth=2)
    assert scalar(y, t).shape == (5, 1) and not scalar.skip
    c = TimeScalar(t_min=1e-3, t_max=1e2)
    assert torch.equal(c(t), torch.zeros(5))


@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_smooth_activations_are_only_approximately_homogeneous(activation):
    torch.manual_seed(0)
    net = _perturbed(MLP(4, 4, t_min=1e-3, t_max=1e2, width=32, depth=2, homogeneous=True,
                         activation=activation)).double()
    y, t = torch.randn(64, 4, dtype=torch.float64), torch.ones(64, dtype=torch.float64)
    dev = ((net(3 * y, t) - 3 * net(y, t)).norm() / (3 * net(y, t)).norm()).item()
    assert 0 < dev < 0.5  # measured, not exact: GELU/SiLU are not positively homogeneous


def test_homogeneous_has_no_bias_in_the_y_path():
    net = MLP(4, 4, t_min=1e-3, t_max=1e2, homogeneous=True)
    assert all(layer.bias is None for layer in net.layers) and net.out.bias is None
    assert all(layer.bias is not None for layer in MLP(4, 4, t_min=1e-3, t_max=1e2).layers)


def test_bad_config():
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        MLP(2, 2, t_min=1e-3, t_max=1.0, activation="tanh")
    with pytest.raises(ValueError, match="depth >= 1"):
        MLP(2, 2, t_min=1e-3, t_max=1.0, depth=0)
