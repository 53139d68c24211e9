"""GELU with a closed-form, cheap second derivative (the energy's double backward needs it).

PyTorch differentiates ``gelu_backward`` as a composite of many elementwise kernels, which
on the CPU showed up as a large share of an energy training step. Here the first backward
is torch's fused ``gelu_backward`` kernel, wrapped in a function whose own backward is the
closed form ``GELU''(x) = phi(x) (2 - x^2)``, with ``phi`` the standard normal density.
That backward is computed from ``x`` with ordinary ops, so a third derivative (the heat
regularizer differentiates a Laplacian) is exact too.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
# g * GELU'(x) in one fused kernel (the same one torch's own GELU backward runs)
_gelu_backward = torch.ops.aten.gelu_backward


class _GeluGrad(torch.autograd.Function):
    """(x, g) -> g * GELU'(x), differentiable once more in closed form."""

    @staticmethod
    def forward(ctx, x, g):
        ctx.save_for_backward(x, g)
        return _gelu_backward(g, x)

    @staticmethod
    def backward(ctx, gg):
        x, g = ctx.saved_tensors
        if torch.is_grad_enabled():  # a third derivative follows: differentiable ops
            x2 = x * x
            pdf = torch.exp(x2 * -0.5) * _INV_SQRT_2PI
            return gg * g * pdf * (2 - x2), _gelu_backward(gg, x)
        # The energy step's last backward: the same numbers in fewer kernels and temporaries
        # (on the CPU this function's share of an energy step fell by a third).
        pdf = torch.addcmul(x.new_zeros(()), x, x, value=-0.5).exp_()  # sqrt(2 pi) phi(x)
        poly = torch.addcmul(x.new_full((), 2 * _INV_SQRT_2PI), x, x, value=-_INV_SQRT_2PI)
        return torch.mul(gg, g).mul_(pdf).mul_(poly), _gelu_backward(gg, x)


class _Gelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.nn.functional.gelu(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if not torch.is_grad_enabled():  # first order only: torch's fused kernel
            return _gelu_backward(g, x)
        return _GeluGrad.apply(x, g)


class FastGELU(nn.Module):
    """Exact (erf) GELU; same values and gradients as ``nn.GELU()``, cheaper double backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Gelu.apply(x)
