"""Convolutions whose double backward uses the fast convolution kernels.

The energy loss differentiates the input gradient of every convolution once more.
PyTorch's formula for that (``_convolution_double_backward``) gets the weight gradient of
the input-gradient convolution as a forward convolution with a kernel the size of the
image and a dilation equal to the stride, which oneDNN runs several times slower than a
weight-gradient kernel; those calls were the largest single item of an energy step
(docs/benchmarks.md). Here the input gradient is a custom function whose backward is the
two adjoints of a bilinear map, each one fast kernel:

- ``gx = A(gO, W)`` (the input gradient, linear in gO and in W),
- ``d<ggx, A(gO, W)>/dgO = conv(ggx, W)``: the forward convolution,
- ``d<ggx, A(gO, W)>/dW``: the weight gradient with input ``ggx`` and output gradient ``gO``.

Values and gradients of every order equal those of ``torch.nn.functional.conv2d`` (tests).
The modules keep ``nn.Conv2d``'s parameter names, so state dicts are interchangeable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.graph import get_gradient_edge

_aten = torch.ops.aten


@dataclass(frozen=True)
class _Geometry:
    """The non-tensor arguments of ``aten.convolution`` (no bias, one group)."""

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    transposed: bool

    def conv(self, x, w):
        zeros = [0] * len(self.stride)
        return _aten.convolution(x, w, None, self.stride, self.padding, [1] * len(self.stride),
                                 self.transposed, zeros, 1)

    def backward(self, g_out, x, w, input_grad: bool, weight_grad: bool):
        zeros = [0] * len(self.stride)
        gx, gw, _ = _aten.convolution_backward(g_out, x, w, None, self.stride, self.padding,
                                               [1] * len(self.stride), self.transposed, zeros, 1,
                                               [input_grad, weight_grad, False])
        return gx, gw


def _engine_needs(t: torch.Tensor) -> bool:
    """Whether the running backward pass will use a gradient for ``t``.

    ``autograd.grad(U, y, create_graph=True)`` (the energy's first pass) needs no weight
    gradients; ``ctx.needs_input_grad`` cannot tell, since the weights do require grad. The
    engine's own answer is what ``torch.utils.checkpoint`` uses too.
    """
    if not t.requires_grad:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(get_gradient_edge(t).node))
    except (AttributeError, RuntimeError):  # another torch, or not inside a backward pass
        return True


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, geo: _Geometry):
        ctx.save_for_backward(x, w)
        ctx.geo = geo
        return geo.conv(x, w)

    @staticmethod
    def backward(ctx, g_out):
        x, w = ctx.saved_tensors
        geo = ctx.geo
        need_x = ctx.needs_input_grad[0] and _engine_needs(x)
        need_w = ctx.needs_input_grad[1] and _engine_needs(w)
        if not torch.is_grad_enabled():  # first order: one kernel call for both
            gx, gw = geo.backward(g_out, x, w, need_x, need_w) if need_x or need_w else (None, None)
            return gx, gw, None
        # create_graph: keep both differentiable, through the functions above
        gx = _ConvInputGrad.apply(g_out, w, x.detach(), geo) if need_x else None
        gw = _ConvWeightGrad.apply(g_out, x, w.detach(), geo) if need_w else None
        return gx, gw, None


class _ConvInputGrad(torch.autograd.Function):
    """(gO, W) -> the input gradient of ``conv(x, W)``; ``x`` gives only the shape."""

    @staticmethod
    def forward(ctx, g_out, w, x, geo: _Geometry):
        ctx.save_for_backward(g_out, w, x)
        ctx.geo = geo
        return geo.backward(g_out, x, w, True, False)[0]

    @staticmethod
    def backward(ctx, ggx):
        g_out, w, x = ctx.saved_tensors
        geo = ctx.geo
        gg_out = _Conv.apply(ggx, w, geo) if ctx.needs_input_grad[0] else None
        gw = None
        if ctx.needs_input_grad[1] and _engine_needs(w):
            gw = _ConvWeightGrad.apply(g_out, ggx, w.detach(), geo)
        return gg_out, gw, None, None


class _ConvWeightGrad(torch.autograd.Function):
    """(gO, x) -> the weight gradient of ``conv(x, W)``; ``W`` gives only the shape.

    Reached only at third order (a Laplacian in the loss, or its gradient): both adjoints
    are again convolutions of the same geometry.
    """

    @staticmethod
    def forward(ctx, g_out, x, w, geo: _Geometry):
        ctx.save_for_backward(g_out, x, w)
        ctx.geo = geo
        return geo.backward(g_out, x, w, False, True)[1]

    @staticmethod
    def backward(ctx, ggw):
        g_out, x, w = ctx.saved_tensors
        geo = ctx.geo
        # <ggw, Wgrad(gO, x)> = <gO, conv(x, ggw)> = <x, A(gO, ggw)>
        gg_out = _Conv.apply(x, ggw, geo) if ctx.needs_input_grad[0] else None
        gx = _ConvInputGrad.apply(g_out, ggw, x.detach(), geo) if ctx.needs_input_grad[1] else None
        return gg_out, gx, None, None


def convolution(x: torch.Tensor, w: torch.Tensor, stride: int = 1, padding: int = 0,
                transposed: bool = False) -> torch.Tensor:
    """``conv2d`` (or ``conv_transpose2d``) without bias: (B, C_in, H, W) -> (B, C_out, H', W')."""
    n = x.dim() - 2
    geo = _Geometry((stride,) * n, (padding,) * n, transposed)
    device = x.device.type
    if torch.is_autocast_enabled(device):
        # Cast here, as autocast does for torch's convolution, so that the functions above
        # (whose backward runs outside autocast) see one dtype; the casts are differentiable.
        dtype = torch.get_autocast_dtype(device)
        x, w = x.to(dtype), w.to(dtype)
        with torch.autocast(device, enabled=False):
            return _Conv.apply(x, w, geo)
    return _Conv.apply(x, w, geo)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` without bias, with the fast double backward (module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return convolution(x, self.weight, self.stride[0], self.padding[0])


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` without bias or output padding, with the fast double backward."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, bias=False)

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if output_size is not None:
            raise ValueError("dsm's ConvTranspose2d takes no output_size")
        return convolution(x, self.weight, self.stride[0], self.padding[0], transposed=True)


__all__ = ["Conv2d", "ConvTranspose2d", "convolution"]
