"""An MLP backbone for vector data, conditioned on the noise level t.

With ``homogeneous=True`` the y-path has no biases and t enters only through
multiplicative gains ``(1 + g_l(t))``, so ``f(a y, t) = a f(y, t)`` for a > 0 exactly with
ReLU and approximately with GELU/SiLU. Otherwise each hidden layer has a bias and a FiLM
shift/gain from t.
"""

from __future__ import annotations

import torch
from torch import nn

from dsm.core.nets.activations import FastGELU
from dsm.core.nets.embedding import make_time_embedding

ACTIVATIONS = {"relu": nn.ReLU, "gelu": FastGELU, "silu": nn.SiLU}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """f(y, t): (B, dim_in), (B,) -> (B, dim_out); (B, *shape) inputs are flattened.

    width/depth: hidden units and number of hidden layers. skip: add the input to the
    output (needs dim_in == dim_out); with the last layer initialised at zero the initial
    inner-form energy is then the Gaussian reference 1/2 ||y~||^2.
    """

    def __init__(self, dim_in: int, dim_out: int, *, t_min: float, t_max: float, width: int = 256,
                 depth: int = 3, embedding: str = "log", n_freq: int | None = None,
                 homogeneous: bool = False, activation: str = "silu", skip: bool = True):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"MLP needs depth >= 1 and width >= 1, got depth={depth}, width={width}")
        if skip and dim_in != dim_out:
            skip = False
        self.dim_in, self.dim_out, self.depth, self.width = dim_in, dim_out, depth, width
        self.homogeneous, self.skip = homogeneous, skip
        self.embed = make_time_embedding(embedding, t_min, t_max, n_freq)
        n_mod = depth * (1 if homogeneous else 2)  # gains, plus shifts when not homogeneous
        self.time_mlp = nn.Sequential(
            nn.Linear(self.embed.n_features, width), nn.SiLU(), nn.Linear(width, n_mod * width)
        )
        nn.init.zeros_(self.time_mlp[-1].weight)
        nn.init.zeros_(self.time_mlp[-1].bias)
        bias = not homogeneous
        dims = [dim_in] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(dims[:-1], dims[1:]))
        self.act = make_activation(activation)
        self.out = nn.Linear(width, dim_out, bias=bias)
        nn.init.zeros_(self.out.weight)
        if self.out.bias is not None:
            nn.init.zeros_(self.out.bias)

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = y.shape
        h = y.flatten(1)
        mods = self.time_mlp(self.embed(t)).to(h.dtype).chunk(self.depth * (1 if self.homogeneous else 2), dim=1)
        for i, layer in enumerate(self.layers):
            if self.homogeneous:
                h = self.act(layer(h) * (1 + mods[i]))
            else:
                h = self.act(layer(h) * (1 + mods[2 * i]) + mods[2 * i + 1])
        out = self.out(h)
        if self.skip:
            out = out + y.flatten(1)
            return out.reshape(shape)
        return out


class TimeScalar(nn.Module):
    """A learned scalar function of the noise level, c(t): (B,) -> (B,). Starts at 0."""

    def __init__(self, *, t_min: float, t_max: float, width: int = 64, embedding: str = "log",
                 n_freq: int | None = None):
        super().__init__()
        self.embed = make_time_embedding(embedding, t_min, t_max, n_freq)
        self.net = nn.Sequential(nn.Linear(self.embed.n_features, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 1, bias=False))
        # No output bias: a constant in c(t) changes neither score, so it would get no gradient
        # (DDP then fails on an unused parameter); the constant is log Z's job.
        nn.init.zeros_(self.net[-1].weight)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(self.embed(t)).squeeze(1)
