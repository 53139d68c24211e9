"""dsm's `paper` UNet against the paper's official code, on the same random weights.

Needs a checkout of the official repository (FlorentinGuth/DualScoreMatching; its
``networks`` package is imported, with stand-ins for its data and tracking modules, which
need torchvision) and ``einops`` on the path; neither is a dsm dependency,
and no test uses this script. The official UNet is built as its released models are
(3 scales, group_size 1, 3 layers per block), its gains and time embeddings are moved off
their initial values, its weights are written in the official layout and read back with
``dsm import official``, and U = <y, f(y, t)> / 2 (the official ``inner_product``
Reparameterization), dU/dy and dU/dt are compared at t from 1e-9 to 1e3.

    pip install --target /tmp/deps einops
    PYTHONPATH=/tmp/deps .venv/bin/python benchmarks/official_equivalence.py --official PATH [--channels 1]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import types
from pathlib import Path

import torch
from _common import machine

from dsm import api
from dsm.cli import main as dsm_main
from dsm.official import ARGS_FILE, WEIGHTS_FILE, export_official, key_map
from dsm.plumbing.config import load_config
from dsm.train import build
from dsm.train.config import TrainConfig


def _official_unet(root: Path, channels: int):
    """The official UNet class, importable without its data and tracking modules."""
    sys.path.insert(0, str(root))
    info = types.SimpleNamespace(num_channels=channels)
    for name, attrs in {"data": ["DatasetInfo"], "trackers": ["TimeTracker", "BatchCovarianceTracker"],
                        "memoize": ["disk_memoize", "short_name"]}.items():
        mod = types.ModuleType(name)
        for a in attrs:
            setattr(mod, a, object)
        sys.modules.setdefault(name, mod)
    from networks.unet import UNet

    torch.manual_seed(0)
    net = UNet(info, num_scales=3, group_size=1, num_layers_encoder_block=3, num_layers_mid_block=3,
               num_layers_decoder_block=3)
    with torch.no_grad():  # gains start at 1 and time maps near 0: move them
        for n, p in net.named_parameters():
            if "conditioning_embedding" in n or p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    return net


def _imported(net, channels: int, folder: Path):
    """Write the official weights in the official layout and read them with `dsm import official`."""
    cfg = load_config(TrainConfig, None, [f"data.path={folder}", "model.preset=paper", "scaling.workers=1"])
    shape = (channels, 64, 64)
    model = build.build_model(cfg, build.DataShape(shape, True))
    export_official(model, cfg, shape, folder / "official")  # args.json, and the layout to overwrite
    official = {"network." + k: v for k, v in net.state_dict().items()}  # the Reparameterization's keys
    assert set(key_map(model).values()) == set(official), set(key_map(model).values()) ^ set(official)
    args = json.loads((folder / "official" / ARGS_FILE).read_text())
    torch.save({"step": 0, "args": argparse.Namespace(**args), "state_dict": official},
               folder / "official" / WEIGHTS_FILE)
    assert dsm_main(["import", "official", str(folder / "official"), "--out", str(folder / "m.pt")]) == 0
    return api.load(folder / "m.pt").energy_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", type=Path, required=True, help="checkout of the official repository")
    p.add_argument("--channels", type=int, default=3)
    args = p.parse_args()
    net = _official_unet(args.official, args.channels)
    ours = _imported(net, args.channels, Path(tempfile.mkdtemp()))
    print(f"machine: {machine()}")
    print(f"official UNet parameters: {sum(q.numel() for q in net.parameters()):,}; dsm: "
          f"{sum(q.numel() for q in ours.parameters()):,}\n")
    print("| t | U | dU/dy | dU/dt |  (max |dsm - official| / max |official|, float32)")
    print("|---|---|---|---|")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, args.channels, 64, 64, generator=g)
    rel = lambda a, b: float((a - b).abs().max() / b.abs().max())  # noqa: E731
    for t in [1e-9, 1e-6, 1e-3, 1e-1, 1.0, 10.0, 100.0, 1e3]:
        tt = torch.full((4,), t, requires_grad=True)
        y = (x + math.sqrt(t) * torch.randn(x.shape, generator=g)).requires_grad_(True)
        u = (y * net(y, tt)).sum((1, 2, 3)) / 2
        gy, gt = torch.autograd.grad(u.sum(), (y, tt))
        s = ours.scores(y.detach(), tt.detach())
        print(f"| {t:g} | {rel(s.energy, u.detach()):.1e} | {rel(s.grad_y, gy):.1e} | {rel(s.grad_t, gt):.1e} |")


if __name__ == "__main__":
    main()
