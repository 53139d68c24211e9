"""A bias-free UNet score backbone f(y, t) for images, homogeneous in y.

The paper's design (docs/design.md section 3):

- ``scales`` encoder blocks, a middle block and ``scales`` decoder blocks; block s has
  ``base_width * 2**s`` channels (64/128/256, 512 in the middle for the paper).
- Each block is ``convs_per_block`` x (conv, normalization, nonlinearity). Encoder blocks
  after the first, and the middle block, start with a strided 2x2 convolution; the middle
  block and decoder blocks after the first end with a 2x2 transposed convolution; decoder
  blocks take the concatenation of the upsampled path and the encoder features.
- The last layer is a plain 3x3 convolution to the image channels (no norm, no nonlinearity).
- No biases anywhere in the y-path. Normalization is per sample and per channel (or per
  group of channels): centre, divide by the std, rescale by the RMS of the stds across
  channels (so the layer is degree-1 homogeneous up to its epsilon), times a learned gain,
  times ``1 + e(t)`` where e(t) is a linear map of the shared time embedding.
- The time embedding is sinusoidal (``official``: the paper's code's embedding of t itself;
  ``linear``: dsm's variant of it, floored at t_min; ``log``: of log t), followed by a
  2-layer MLP to ``emb_dim`` features.

Two variants of the same structure (docs/unet.md says which to train with):

- ``paper`` is the paper's function exactly: the official code's normalization
  ``sqrt(m / (var + eps) + eps)``, time MLP Linear-SiLU-Linear-SiLU and embedding
  ``[cos(t f), sin(t f)]``. ``dsm import official`` loads the released checkpoints into it.
- ``paper-dsm`` and the CPU presets use dsm's choices: the relative-eps normalization
  ``sqrt(m / (var + eps m))``, time MLP Linear-GELU-Linear and a floored embedding.

With ``activation="relu"`` the whole network satisfies f(a y, t) = a f(y, t) for a > 0 (up to
the normalization epsilon); with GELU only approximately.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from dsm.core.nets.conv import Conv2d, ConvTranspose2d
from dsm.core.nets.embedding import TIME_EMBEDDINGS, make_time_embedding
from dsm.core.nets.mlp import ACTIVATIONS, make_activation

# How the normalization keeps its division finite (HomogeneousNorm), and the time MLP's shape.
NORM_EPS_FORMS = ("relative", "official")
TIME_MLPS = ("gelu", "official")


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the UNet. ``channels``: 1 (gray) or 3 (colour); ``image_size``: H = W.

    The annotations are the one declaration of each field's type and range: the training
    config's ``model.unet`` options (dsm.core.models.UNetOptions) are derived from them."""

    channels: int = 3
    image_size: int = 64
    base_width: Annotated[int, Field(ge=1, description="channels of the first block; block s has "
                                                       "base_width * 2**s")] = 64
    scales: Annotated[int, Field(ge=0, description="encoder blocks (and as many decoder blocks): the image side is "
                                                   "halved scales times, so it must be divisible by 2**scales")] = 3
    convs_per_block: Annotated[int, Field(ge=2, description="(convolution, normalization, nonlinearity) layers "
                                                            "per block")] = 3
    kernel_size: Annotated[int, Field(ge=1, description="side of the convolution kernels in pixels (odd)")] = 3
    activation: Annotated[Literal[tuple(ACTIVATIONS)], Field(
        description="nonlinearity (relu keeps the network homogeneous in y)")] = "gelu"
    embedding: Annotated[Literal[tuple(TIME_EMBEDDINGS)], Field(
        description="time embedding: log (Fourier features of log t), linear (sin/cos of t, floored at t_min) or "
                    "official (the paper's code's, unfloored)")] = "linear"
    n_freq: Annotated[int, Field(ge=1, description="frequencies of the time embedding")] = 32
    emb_dim: Annotated[int, Field(ge=1, description="features of the time MLP's output, which scales every "
                                                    "normalization")] = 256
    group_size: Annotated[int, Field(ge=1, description="channels per normalization group (1: per channel)")] = 1
    eps: Annotated[float, Field(gt=0, description="epsilon of the normalization's division (see norm_eps)")] = 1e-5
    norm_eps: Annotated[Literal[NORM_EPS_FORMS], Field(
        description="normalization epsilon: relative sqrt(m/(var+eps m)) (dsm) or official sqrt(m/(var+eps)+eps)")
    ] = "relative"
    time_mlp: Annotated[Literal[TIME_MLPS], Field(
        description="time MLP: Linear-GELU-Linear (dsm) or Linear-SiLU-Linear-SiLU (official)")] = "gelu"
    t_min: float = 1e-9
    t_max: float = 1e3

    def __post_init__(self):
        if self.channels < 1 or self.image_size < 1 or self.base_width < 1:
            raise ValueError(f"channels, image_size and base_width must be >= 1: {self}")
        if self.scales < 0:
            raise ValueError(f"scales must be >= 0, got {self.scales}")
        if self.convs_per_block < 2:
            raise ValueError(f"convs_per_block must be >= 2 (the middle block needs a down- and an "
                             f"up-sampling convolution), got {self.convs_per_block}")
        if self.norm_eps not in NORM_EPS_FORMS:
            raise ValueError(f"unknown norm_eps {self.norm_eps!r}; known: {NORM_EPS_FORMS}")
        if self.time_mlp not in TIME_MLPS:
            raise ValueError(f"unknown time_mlp {self.time_mlp!r}; known: {TIME_MLPS}")
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the image size, got {self.kernel_size}")
        factor = 2**self.scales  # scales - 1 encoder downsamplings, then one into the middle block
        if self.image_size % factor:
            ok = [s for s in range(self.scales + 1) if self.image_size % 2**s == 0]
            size = -(-self.image_size // factor) * factor
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2**scales = {factor}: use scales <= {max(ok)} "
                f"for this size, or pad/resize the images to {size} for scales={self.scales}")
        if self.group_size == 1 and self.image_size // factor < 2:
            raise ValueError(
                f"image_size {self.image_size} with scales={self.scales} leaves a 1x1 middle block, where "
                f"per-channel normalization has no variance: use scales <= "
                f"{max(s for s in range(self.scales + 1) if self.image_size // 2**s >= 2)} or group_size > 1")
        width = self.base_width * 2**self.scales
        if width % self.group_size or self.base_width % self.group_size:
            raise ValueError(f"group_size {self.group_size} must divide every block's channel count")


_PAPER_SHAPE = dict(base_width=64, scales=3, convs_per_block=3, n_freq=32, emb_dim=256)
PRESETS: dict[str, dict] = {
    # The paper's network, exactly the official code's function: 8,649,856 parameters for
    # colour 64x64, 8,647,552 for grayscale.
    "paper": dict(_PAPER_SHAPE, embedding="official", norm_eps="official", time_mlp="official"),
    # The same structure and size with dsm's choices (the `paper` preset of dsm <= 0.13).
    "paper-dsm": dict(_PAPER_SHAPE, embedding="linear", norm_eps="relative", time_mlp="gelu"),
    # CPU-sized networks for 8x8 to 28x28 data.
    "small": dict(base_width=32, scales=2, convs_per_block=2, embedding="log", n_freq=16, emb_dim=128),
    "tiny": dict(base_width=16, scales=1, convs_per_block=2, embedding="log", n_freq=8, emb_dim=64),
}


def unet_config(preset: str = "small", **overrides) -> UNetConfig:
    """A :class:`UNetConfig` from a named preset, with field overrides."""
    if preset not in PRESETS:
        raise ValueError(f"unknown UNet preset {preset!r}; known: {sorted(PRESETS)}")
    return UNetConfig(**{**PRESETS[preset], **overrides})


def norm_factor(var: torch.Tensor, eps: float, eps_form: str) -> torch.Tensor:
    """The per-group multiplier of the centred input, (B, G) -> (B, G), degree 0 in x.

    var: per-sample, per-group variances. m below is their mean over the groups of a sample,
    so the output keeps the input's overall scale.

    ``relative`` (dsm): ``sqrt(m / (var + eps m))``. The epsilon is relative to m: an
    absolute one breaks homogeneity exactly where it matters (tiny inputs at small t) and,
    with activations shrinking through depth, drove variances into denormals and then to 0,
    where sqrt has an infinite gradient (NaN losses, and 4x slower steps on CPU). An all-zero
    input (m = 0) maps to exactly 0, with a finite gradient.

    ``official`` (the paper's code: input statistics, preserve_scale, stddev,
    symmetric_eps=False): ``sqrt(m / (var + eps) + eps)``.
    """
    m = var.mean(dim=1, keepdim=True)
    if eps_form == "official":
        return torch.sqrt(m / (var + eps) + eps)
    # where() keeps the m = 0 branch out of the gradient (a plain guard overflows there)
    m = torch.where(m > 0, m, torch.ones_like(m))
    return torch.sqrt(m / (var + eps * m))


class HomogeneousNorm(nn.Module):
    """Per-sample, per-group normalization that is degree-1 homogeneous in its input.

    x (B, C, H, W) -> centre and divide by the std of each group, multiply by the RMS of the
    group stds (the input's overall scale), then by a learned gain and ``1 + e(t)``. How the
    division stays finite is ``eps_form`` (:func:`norm_factor`).
    """

    def __init__(self, channels: int, emb_dim: int, group_size: int = 1, eps: float = 1e-5,
                 eps_form: str = "relative"):
        super().__init__()
        if eps_form not in NORM_EPS_FORMS:
            raise ValueError(f"unknown eps_form {eps_form!r}; known: {NORM_EPS_FORMS}")
        self.channels, self.groups, self.eps, self.eps_form = channels, channels // group_size, eps, eps_form
        self.weight = nn.Parameter(torch.ones(channels))
        self.cond = nn.Linear(emb_dim, channels)
        nn.init.zeros_(self.cond.weight)
        nn.init.zeros_(self.cond.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        xr = x.reshape(b, self.groups, -1)
        # Two passes (mean, then the centred square) instead of torch.var_mean: as stable,
        # and on the CPU faster than var_mean's kernel over rows this short (docs/benchmarks.md).
        xc = xr - xr.mean(dim=2, keepdim=True)
        var = xc.square().mean(dim=2)  # (B, G)
        factor = norm_factor(var, self.eps, self.eps_form)
        if self.groups != c:
            factor = factor.repeat_interleave(c // self.groups, dim=1)
        # All per-(sample, channel) coefficients are combined first, so the full-size tensor
        # sees one multiply: elementwise work dominates the double backward on the CPU
        # (docs/benchmarks.md).
        coef = factor * self.weight * (1 + self.cond(emb))  # (B, C)
        return xc.reshape(b, c, h, w) * coef[:, :, None, None]


class _Layer(nn.Module):
    """conv -> HomogeneousNorm -> nonlinearity."""

    def __init__(self, conv: nn.Module, channels: int, cfg: UNetConfig):
        super().__init__()
        self.conv = conv
        self.norm = HomogeneousNorm(channels, cfg.emb_dim, cfg.group_size, cfg.eps, cfg.norm_eps)
        self.act = make_activation(cfg.activation)

    def forward(self, x, emb):
        return self.act(self.norm(self.conv(x), emb))


def _time_mlp(n_features: int, emb_dim: int, kind: str) -> nn.Sequential:
    """Embedding features -> (B, emb_dim). ``official``: Linear-SiLU-Linear-SiLU, the paper's
    code; ``gelu``: Linear-GELU-Linear (dsm). Both keep the Linear layers at indices 0 and 2."""
    if kind == "official":
        return nn.Sequential(nn.Linear(n_features, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU())
    return nn.Sequential(nn.Linear(n_features, emb_dim), nn.GELU(), nn.Linear(emb_dim, emb_dim))


class UNet(nn.Module):
    """f(y, t): (B, C, H, W), (B,) -> (B, C, H, W). See the module docstring."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        k, pad = cfg.kernel_size, cfg.kernel_size // 2
        conv = lambda a, b: Conv2d(a, b, k, padding=pad)  # noqa: E731
        down = lambda a, b: Conv2d(a, b, 2, stride=2)  # noqa: E731
        up = lambda a, b: ConvTranspose2d(a, b, 2, stride=2)  # noqa: E731
        width = lambda s: cfg.base_width * 2**s  # noqa: E731
        n = cfg.convs_per_block

        self.embed = make_time_embedding(cfg.embedding, cfg.t_min, cfg.t_max, cfg.n_freq)
        self.time_mlp = _time_mlp(self.embed.n_features, cfg.emb_dim, cfg.time_mlp)

        def block(layers):
            return nn.ModuleList(_Layer(c, ch, cfg) for c, ch in layers)

        # Every block has n = convs_per_block convolutions, the first/last of which may be a
        # down/up-sampling one; scale 0 of the decoder ends with the plain output convolution.
        self.encoder = nn.ModuleList()
        ch = cfg.channels
        for s in range(cfg.scales):
            layers = [(down(ch, width(s)) if s > 0 else conv(ch, width(s)), width(s))]
            layers += [(conv(width(s), width(s)), width(s)) for _ in range(n - 1)]
            self.encoder.append(block(layers))
            ch = width(s)
        s = cfg.scales
        out_mid = width(s - 1) if s > 0 else width(s)
        layers = [(down(ch, width(s)) if s > 0 else conv(ch, width(s)), width(s))]
        layers += [(conv(width(s), width(s)), width(s)) for _ in range(n - 2)]
        layers += [((up if s > 0 else conv)(width(s), out_mid), out_mid)]
        self.middle = block(layers)
        ch = out_mid
        self.decoder = nn.ModuleList()
        for s in range(cfg.scales - 1, -1, -1):
            ch *= 2  # concatenated skip
            layers = [(conv(ch, width(s)), width(s))]
            layers += [(conv(width(s), width(s)), width(s)) for _ in range(n - 2)]
            if s > 0:
                layers.append((up(width(s), width(s - 1)), width(s - 1)))
            self.decoder.append(block(layers))
            ch = width(s - 1) if s > 0 else width(s)
        self.out = conv(ch, cfg.channels)
        for mod in self.modules():
            if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
                # He init keeps the signal's scale through conv + nonlinearity
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
        # f = 0 at init: D = y, and the loss starts near 1 at every noise level
        nn.init.zeros_(self.out.weight)

    def forward(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(self.embed(t).to(y.dtype))
        h, skips = y, []
        for blk in self.encoder:
            for layer in blk:
                h = layer(h, emb)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, emb)
        for blk, skip in zip(self.decoder, reversed(skips)):
            h = torch.cat([h, skip], dim=1)
            for layer in blk:
                h = layer(h, emb)
        return self.out(h)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["UNet", "UNetConfig", "HomogeneousNorm", "PRESETS", "NORM_EPS_FORMS", "TIME_MLPS", "norm_factor",
           "unet_config", "count_parameters"]
