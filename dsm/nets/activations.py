"""GELU with a closed-form, cheap second derivative (the energy's double backward needs it).

PyTorch differentiates ``gelu_backward`` as a composite of many elementwise kernels, which
on the CPU showed up as a large share of an energy training step. Here the first backward
is a custom function whose own backward is the closed form
``GELU''(x) = phi(x) (2 - x^2)``, with ``phi`` the standard normal density. Third
derivatives are not supported (nothing in dsm needs them).
"""

from __future__ import annotations

import math

import torch
from torch import nn

_INV_SQRT2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


class _GeluGrad(torch.autograd.Function):
    """(x, g) -> g * GELU'(x), differentiable once more in closed form."""

    @staticmethod
    def forward(ctx, x, g):
        pdf = torch.exp(-0.5 * x * x) * _INV_SQRT_2PI
        dgelu = 0.5 * (1 + torch.erf(x * _INV_SQRT2)) + x * pdf
        ctx.save_for_backward(x, g, pdf, dgelu)
        return g * dgelu

    @staticmethod
    def backward(ctx, gg):
        x, g, pdf, dgelu = ctx.saved_tensors
        return gg * g * pdf * (2 - x * x), gg * dgelu


class _Gelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.nn.functional.gelu(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return _GeluGrad.apply(x, g)


class FastGELU(nn.Module):
    """Exact (erf) GELU; same values and gradients as ``nn.GELU()``, cheaper double backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Gelu.apply(x)
