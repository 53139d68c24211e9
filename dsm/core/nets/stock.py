"""The UNet with PyTorch's stock ops in place of dsm's fast ones: same parameters, same numbers.

dsm's UNet runs three ops written for the energy's double backward: the convolutions of
:mod:`dsm.core.nets.conv`, the GELU of :mod:`dsm.core.nets.activations` and the two-pass
normalization statistics of :class:`~dsm.core.nets.unet.HomogeneousNorm`. :func:`with_stock_ops`
gives a copy that runs ``nn.Conv2d``/``nn.ConvTranspose2d``, ``nn.GELU`` and
``torch.var_mean`` instead. The tests use it to show that the fast ops change no results,
and ``benchmarks/unet_step.py --stock`` to measure what they save, in the same run.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dsm.core.nets.activations import FastGELU
from dsm.core.nets.conv import Conv2d, ConvTranspose2d
from dsm.core.nets.unet import HomogeneousNorm, norm_factor


class StockHomogeneousNorm(HomogeneousNorm):
    """:class:`HomogeneousNorm` with ``torch.var_mean`` and no fused coefficients."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        var, mean = torch.var_mean(x.reshape(b, self.groups, -1), dim=2, unbiased=False, keepdim=True)
        factor = norm_factor(var[..., 0], self.eps, self.eps_form)[..., None]
        xn = ((x.reshape(b, self.groups, -1) - mean) * factor).reshape(b, c, h, w)
        return xn * (self.weight * (1 + self.cond(emb)))[:, :, None, None]


def _stock(module: nn.Module) -> nn.Module | None:
    if isinstance(module, Conv2d):
        new = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                        module.padding, bias=False)
    elif isinstance(module, ConvTranspose2d):
        new = nn.ConvTranspose2d(module.in_channels, module.out_channels, module.kernel_size,
                                 module.stride, bias=False)
    elif isinstance(module, FastGELU):
        return nn.GELU()
    elif isinstance(module, HomogeneousNorm) and not isinstance(module, StockHomogeneousNorm):
        new = StockHomogeneousNorm(module.channels, module.cond.in_features, module.channels // module.groups,
                                   module.eps, module.eps_form)
    else:
        return None
    new.to(module.weight).load_state_dict(module.state_dict())  # dtype and device too
    return new


def with_stock_ops(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every fast op replaced by its stock equivalent.

    Parameter names and values are kept, so state dicts and gradients compare by name.
    """
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = _stock(child)
            if new is not None:
                setattr(parent, name, new)
    return model


__all__ = ["with_stock_ops", "StockHomogeneousNorm"]
