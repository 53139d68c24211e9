import torch

from dsm.core.nets.activations import FastGELU


def test_fast_gelu_matches_torch_to_second_order():
    x = torch.linspace(-6, 6, 241, dtype=torch.float64).requires_grad_(True)
    ours, ref = FastGELU()(x), torch.nn.functional.gelu(x)
    assert torch.allclose(ours, ref)
    v = torch.randn(241, dtype=torch.float64)
    (g1,) = torch.autograd.grad((ours * v).sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad((ref * v).sum(), x, create_graph=True)
    assert torch.allclose(g1, g2, atol=1e-12)
    w = torch.randn(241, dtype=torch.float64)
    (h1,) = torch.autograd.grad((g1 * w).sum(), x)
    (h2,) = torch.autograd.grad((g2 * w).sum(), x)
    assert torch.allclose(h1, h2, atol=1e-12)


def test_fast_gelu_gradcheck():
    x = torch.randn(20, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(FastGELU(), (x,))
    assert torch.autograd.gradgradcheck(FastGELU(), (x,))


def test_fast_gelu_third_derivative_is_exact():
    """The heat regularizer differentiates a Laplacian: GELU''' must be right too."""
    x = torch.linspace(-5, 5, 101, dtype=torch.float64).requires_grad_(True)

    def third(f):
        (g1,) = torch.autograd.grad(f(x).sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad(g1.sum(), x, create_graph=True)
        return torch.autograd.grad(g2.sum(), x)[0]

    assert torch.allclose(third(FastGELU()), third(torch.nn.functional.gelu), atol=1e-12)
