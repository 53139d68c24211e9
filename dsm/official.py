"""The paper's official checkpoints (FlorentinGuth/DualScoreMatching) read into dsm bundles, and back.

A released model is a folder ``models/<name>/`` holding:

- ``args.json``: the training arguments; ``network_kwargs``, ``reparam_kwargs`` and
  ``model_kwargs`` are Python literals in strings (``"{'num_scales':3}"``, ``"dict()"``);
- ``model.pth.tar``: a ``torch.save`` dict with ``step``, ``args`` (an argparse.Namespace),
  ``state_dict`` (the weights of the official Reparameterization module, keys
  ``network.encoder.{scale}.{3 layer [+ 1]}...``) and ``train_perf`` / ``test_perf``
  (objects of the official code's own classes).

dsm's ``paper`` UNet preset is the same function (docs/unet.md), so importing is a renaming
of keys: :func:`official_key`. The official decoder is indexed by scale (``decoder.0`` runs
last and ends with the output convolution); dsm's by execution order, with the output
convolution apart.

Reading never runs pickled code and never imports the official code. The pickle is read by
torch's ``weights_only`` unpickler, in which every class the file names from the official
code (``__main__.PerformanceInfo``, ``noise.NoiseLevel``, ``networks.model.LogTensor``, ...)
or from the standard and numpy modules its metadata uses is an inert stand-in
(:class:`StandIn`): it only keeps the state it is given. Any other callable the file names
(``os.system``, ``builtins.eval``, ...) makes the whole file refused before unpickling.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

ARGS_FILE, WEIGHTS_FILE = "args.json", "model.pth.tar"
# Top-level modules whose classes stand in inertly. Safety does not rest on this list (no
# name is ever resolved to real code); it decides which files are plausibly official.
STAND_IN_MODULES = ("__main__", "argparse", "noise", "data", "networks", "trackers", "utils", "numpy", "pathlib")
# The official UNet's defaults for the kwargs the released models do not set.
_UNET_DEFAULTS = dict(num_scales=3, base_width=64, kernel_size=3, padding=1, group_size=8, homogeneous=True,
                      noise_conditioning=True, num_layers_encoder_block=2, num_layers_mid_block=2,
                      num_layers_decoder_block=2)
# reparam_kwargs of the two supported models: the paper's energy and its residual denoiser
_ENERGY_REPARAM = {"conversion": "inner_product"}
_DENOISER_REPARAM = {"output_scaling": 1, "residual": True}
_IMAGE_SIZES = {"ImageNet64": 64, "ImageNet32": 32}


class OfficialCheckpointError(ValueError):
    """An official checkpoint folder dsm cannot or will not read; one line naming the file."""


class StandIn:
    """An inert object in place of a class of the official code: it keeps what it is given."""

    official_name = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.official_name}>"


def _stand_in(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (StandIn,), {"official_name": name})


def _is_stand_in_name(name: str) -> bool:
    return name.split(".", 1)[0] in STAND_IN_MODULES


def read_checkpoint(path: str | Path) -> dict:
    """The dict in an official ``model.pth.tar``, its foreign objects as :class:`StandIn`.

    Raises OfficialCheckpointError (naming the file) for a missing file, a file that is not a
    torch checkpoint, one that names a callable outside the official code, or one without a
    ``state_dict`` of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise OfficialCheckpointError(f"{path}: not a checkpoint (not the zip format torch.save writes)")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise OfficialCheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    foreign = [n for n in names if not _is_stand_in_name(n)]
    if foreign:
        raise OfficialCheckpointError(
            f"{path}: refused: it would call {', '.join(sorted(foreign))}, which no official DualScoreMatching "
            "checkpoint does; nothing in it was run")
    try:
        with torch.serialization.safe_globals([(_stand_in(n), n) for n in names]):
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise OfficialCheckpointError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {e})".split("\n")[0]) from None
    state = blob.get("state_dict") if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OfficialCheckpointError(f"{path}: not an official checkpoint (no 'state_dict' of tensors)")
    return blob


@dataclass(frozen=True)
class OfficialModel:
    """What ``args.json`` says about the network, in dsm's terms.

    kind: ``energy`` (the paper's EnergyModel, U = <y, f(y, t)> / 2) or ``score`` (the
    residual DenoiserModel, D = y - t f(y, t)); t_min, t_max: the training range of the
    noise variance, for [0, 1] pixels.
    """

    name: str
    kind: str
    channels: int
    image_size: int
    scales: int
    convs_per_block: int
    base_width: int
    kernel_size: int
    group_size: int
    additive_normalization: bool
    t_min: float
    t_max: float
    args: dict


def _literal_kwargs(text: Any, field: str, where: Path) -> dict:
    """``"{'a': 1}"`` or ``"dict(a=1)"`` -> {'a': 1}, by ``ast`` alone (no eval)."""
    bad = OfficialCheckpointError(f"{where}: {field} is not a Python dict literal: {text!r}")
    if not isinstance(text, str):
        raise bad
    try:
        node = ast.parse(text, mode="eval").body
        if isinstance(node, ast.Dict):
            out = ast.literal_eval(node)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" \
                and not node.args and all(k.arg for k in node.keywords):
            out = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        else:
            raise bad
    except (SyntaxError, ValueError):
        raise bad from None
    if not isinstance(out, dict):
        raise bad
    return out


def _noise_variance(level: Any, field: str, where: Path) -> float:
    """A noise level of args.json (``{"x": 90, "unit": "psnr"}``) as a variance on [0, 1] pixels."""
    if (not isinstance(level, dict) or level.get("unit") not in ("psnr", "var")
            or not isinstance(level.get("x"), (int, float))):
        raise OfficialCheckpointError(f"{where}: unsupported {field} {level!r} (dsm reads units 'psnr' and 'var')")
    return 10.0 ** (-float(level["x"]) / 10.0) if level["unit"] == "psnr" else float(level["x"])


def _unsupported(where: Path, what: str) -> OfficialCheckpointError:
    return OfficialCheckpointError(f"{where}: unsupported {what}")


def _network(args: dict, where: Path) -> dict:
    """The official UNet kwargs with defaults filled in, checked against what dsm's UNet is."""
    if args.get("network") != "UNet":
        raise _unsupported(where, f"network {args.get('network')!r} (dsm imports the UNet)")
    kw = _literal_kwargs(args.get("network_kwargs", "dict()"), "network_kwargs", where)
    extra = sorted(set(kw) - set(_UNET_DEFAULTS))
    if extra:
        raise _unsupported(where, f"network_kwargs {', '.join(extra)}")
    kw = {**_UNET_DEFAULTS, **kw}
    layers = {kw["num_layers_encoder_block"], kw["num_layers_mid_block"], kw["num_layers_decoder_block"]}
    if len(layers) != 1:
        raise _unsupported(where, "network_kwargs: encoder, middle and decoder blocks of different depths")
    if not kw["homogeneous"] or not kw["noise_conditioning"] or kw["padding"] != kw["kernel_size"] // 2:
        raise _unsupported(where, "network_kwargs: dsm's UNet is homogeneous, noise-conditioned and size-preserving")
    return kw


def _model_kind(args: dict, where: Path) -> tuple[str, bool]:
    """(``energy`` or ``score``, additive_normalization) from model and reparam_kwargs."""
    if _literal_kwargs(args.get("model_kwargs", "dict()"), "model_kwargs", where):
        raise _unsupported(where, f"model_kwargs {args.get('model_kwargs')!r}")
    reparam = _literal_kwargs(args.get("reparam_kwargs", "dict()"), "reparam_kwargs", where)
    if args.get("model") == "EnergyModel":
        additive = bool(reparam.pop("additive_normalization", False))
        if reparam == _ENERGY_REPARAM:
            return "energy", additive
    elif args.get("model") == "DenoiserModel" and reparam == _DENOISER_REPARAM:
        return "score", False
    raise _unsupported(where, f"model {args.get('model')!r} with reparam_kwargs {args.get('reparam_kwargs')!r} "
                              f"(dsm imports EnergyModel with {_ENERGY_REPARAM} "
                              f"and DenoiserModel with {_DENOISER_REPARAM})")


def read_args(path: str | Path) -> OfficialModel:
    """Parse an official ``args.json``; OfficialCheckpointError names what dsm cannot import."""
    path = Path(path)
    try:
        args = json.loads(path.read_text())
    except FileNotFoundError:
        raise OfficialCheckpointError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise OfficialCheckpointError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(args, dict):
        raise OfficialCheckpointError(f"{path}: not an official args.json (not a JSON object)")
    kind, additive = _model_kind(args, path)
    kw = _network(args, path)
    if args.get("embed_noise_level_in_range"):
        raise _unsupported(path, "embed_noise_level_in_range: true (the released models embed t on [1, 100])")
    if args.get("noise_covariance") is not None:
        raise _unsupported(path, "noise_covariance (dsm trains on white noise)")
    size = args.get("spatial_size") or _IMAGE_SIZES.get(args.get("dataset"))
    if not isinstance(size, int):
        raise _unsupported(path, f"dataset {args.get('dataset')!r} without spatial_size (image size unknown)")
    return OfficialModel(
        name=str(args.get("name") or path.parent.name), kind=kind, channels=1 if args.get("grayscale") else 3,
        image_size=size, scales=int(kw["num_scales"]), convs_per_block=int(kw["num_layers_encoder_block"]),
        base_width=int(kw["base_width"]), kernel_size=int(kw["kernel_size"]), group_size=int(kw["group_size"] or 1),
        additive_normalization=additive, t_min=_noise_variance(args.get("min_noise_level"), "min_noise_level", path),
        t_max=_noise_variance(args.get("max_noise_level"), "max_noise_level", path), args=args)


def train_config(spec: OfficialModel):
    """The dsm :class:`~dsm.train.config.TrainConfig` of the same model (and its training recipe)."""
    from dsm.train.config import TrainConfig

    a = spec.args
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", spec.name).lstrip(".") or "official"
    unet = dict(scales=spec.scales, convs_per_block=spec.convs_per_block, base_width=spec.base_width,
                kernel_size=spec.kernel_size, group_size=spec.group_size)
    batch = int(a.get("train_batch_size") or 128)
    optim = {"lr": float(a.get("lr") or 5e-4)}
    if a.get("lr_decay_every"):
        optim.update(schedule="halving", halve_every=int(a["lr_decay_every"]))
    return TrainConfig.model_validate({
        "name": name, "steps": int(a.get("num_training_steps") or 1),
        # a description only: the official data set, which dsm converts with `dsm data convert`
        "data": {"path": f"official:{a.get('dataset')}", "batch_size": batch, "flips": bool(a.get("horizontal_flip"))},
        "model": {"kind": spec.kind, "arch": "unet", "preset": "paper", "form": "inner", "scaling": "none",
                  "additive_normalization": spec.additive_normalization, "unet": unet},
        "noise": {"t_min": spec.t_min, "t_max": spec.t_max},
        "loss": {"tsm_weight": float(a.get("train_noise_score") or 0.0)},
        "optim": optim, "scaling": {"workers": 1}})


def official_key(key: str, scales: int, convs_per_block: int) -> str | None:
    """The official state-dict key of a dsm model's key (None for dsm-only state, e.g. log_z).

    dsm ``backbone.encoder.{s}.{l}.conv.weight`` is ``network.encoder.{s}.{3l}.weight``, its
    norm ``...{3l+1}.weight`` and ``...{3l+1}.conditioning_embedding.*``; dsm's decoder block
    i runs at scale ``scales - 1 - i``; ``backbone.out`` is the last conv of ``decoder.0``.
    """
    parts = key.split(".")
    if parts[0] != "backbone" or len(parts) < 3:
        return None
    rest = parts[1:]
    if rest[0] == "time_mlp":
        return "network.noise_var_embedding.time_embed." + ".".join(rest[1:])
    if rest[0] == "out":
        return f"network.decoder.0.{3 * (convs_per_block - 1)}." + ".".join(rest[1:])
    if rest[0] == "middle":
        head, (layer, sub, *tail) = "network.middle_block", rest[1:]
    elif rest[0] in ("encoder", "decoder"):
        scale = int(rest[1]) if rest[0] == "encoder" else scales - 1 - int(rest[1])
        head, (layer, sub, *tail) = f"network.{rest[0]}.{scale}", rest[2:]
    else:
        return None
    index = 3 * int(layer) + (0 if sub == "conv" else 1)
    tail = ["conditioning_embedding" if p == "cond" else p for p in tail]
    return ".".join([head, str(index), *tail])


def key_map(model: nn.Module) -> dict[str, str]:
    """{dsm key: official key} over every persistent tensor of ``model`` (a UNet energy or score
    model) that the official file holds."""
    unet = model.backbone.cfg
    out = {}
    for k in model.state_dict():
        ok = official_key(k, unet.scales, unet.convs_per_block)
        if ok is not None:
            out[k] = ok
    return out


def _mapped_state(model: nn.Module, official: dict, where: Path) -> dict:
    """The official state dict renamed for ``model``; one-line errors for keys and shapes."""
    names = key_map(model)
    want = set(names.values())
    missing, unexpected = sorted(want - set(official)), sorted(set(official) - want)
    for what, keys in (("missing key", missing), ("unexpected key", unexpected)):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise OfficialCheckpointError(f"{where}: {what} {keys[0]}{more} for the model args.json describes")
    ours = model.state_dict()
    state = {}
    for k, ok in names.items():
        if tuple(official[ok].shape) != tuple(ours[k].shape):
            raise OfficialCheckpointError(f"{where}: {ok} has shape {tuple(official[ok].shape)}, the model args.json "
                                          f"describes needs {tuple(ours[k].shape)}")
        state[k] = official[ok].to(ours[k].dtype)
    return state


def import_official(src: str | Path, out: str | Path) -> Path:
    """Read the official folder ``src`` (args.json, model.pth.tar) and write a dsm bundle to ``out``.

    The energy becomes a ``kind: energy`` bundle, the denoiser a ``kind: score`` one, both on
    the ``paper`` UNet preset. The bundle is unnormalized (log Z = 0): run ``dsm normalize``.
    Returns the bundle path.
    """
    from dsm.core.bundle import save_bundle
    from dsm.plumbing.config import ConfigError
    from dsm.train.build import DataShape, build_model

    src = Path(src)
    if not src.is_dir():
        raise OfficialCheckpointError(f"{src}: not a folder (give an official models/<name>/ folder)")
    spec = read_args(src / ARGS_FILE)
    blob = read_checkpoint(src / WEIGHTS_FILE)
    cfg = train_config(spec)
    shape = DataShape((spec.channels, spec.image_size, spec.image_size), True)
    try:
        model = build_model(cfg, shape)
    except ConfigError as e:
        raise _unsupported(src / ARGS_FILE, f"network for dsm's UNet ({e})") from None
    state = {**model.state_dict(), **_mapped_state(model, blob["state_dict"], src / WEIGHTS_FILE)}
    model.load_state_dict(state)
    step = int(blob.get("step") or 0)
    meta = {"source": "official DualScoreMatching checkpoint", "official_name": spec.name, "step": step,
            "official_args": spec.args}
    return save_bundle(out, model, cfg, shape.shape, True, normalization=None, meta=meta)


def _check_exportable(cfg, shape: tuple[int, ...]) -> None:
    m = cfg.model
    over = m.unet.model_dump(exclude_none=True)
    changed = {k for k in ("embedding", "norm_eps", "time_mlp", "activation", "n_freq", "emb_dim", "eps") if k in over}
    if m.arch != "unet" or m.preset != "paper" or changed or m.form != "inner" or m.scaling != "none":
        raise ValueError("only the `paper` UNet preset with form inner and scaling none (and the score model on it) "
                         "is a function of the official code")
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(f"the official code takes gray or colour images, not shape {tuple(shape)}")


def official_args(cfg, shape: tuple[int, ...]) -> dict:
    """The official ``args.json`` of a dsm model on the ``paper`` preset (see :func:`read_args`)."""
    from dsm.core.nets.unet import unet_config

    _check_exportable(cfg, shape)
    c, size = shape[0], shape[1]
    u = unet_config("paper", channels=c, image_size=size, **cfg.model.unet.model_dump(exclude_none=True))
    n = u.convs_per_block
    net = dict(num_scales=u.scales, base_width=u.base_width, kernel_size=u.kernel_size, padding=u.kernel_size // 2,
               group_size=u.group_size, num_layers_encoder_block=n, num_layers_mid_block=n, num_layers_decoder_block=n)
    energy = cfg.model.kind == "energy"
    reparam = dict(_ENERGY_REPARAM, **({"additive_normalization": True} if cfg.model.additive_normalization else {}))
    psnr = lambda t: {"x": -10.0 * math.log10(t), "unit": "psnr"}  # noqa: E731
    return {"name": cfg.name or "dsm-export", "dataset": f"ImageNet{size}", "spatial_size": size,
            "grayscale": c == 1, "horizontal_flip": cfg.data.flips, "noise_sampler": "WhiteGaussianSampler()",
            "noise_covariance": None, "noise_level_sampler": "UniformLog", "min_noise_level": psnr(cfg.noise.t_min),
            "max_noise_level": psnr(cfg.noise.t_max), "embed_noise_level_in_range": False,
            "model": "EnergyModel" if energy else "DenoiserModel", "model_kwargs": "dict()", "network": "UNet",
            "network_kwargs": repr(net), "reparam_kwargs": repr(reparam if energy else _DENOISER_REPARAM),
            "train_noise_score": cfg.loss.tsm_weight if energy else None, "train_batch_size": cfg.data.batch_size,
            "num_training_steps": cfg.steps, "lr": cfg.optim.lr,
            "lr_decay_every": cfg.optim.halve_every if cfg.optim.schedule == "halving" else None}


def export_official(model: nn.Module, cfg, shape: tuple[int, ...], folder: str | Path, step: int = 0,
                    extra: dict | None = None) -> Path:
    """Write ``folder/args.json`` and ``folder/model.pth.tar`` in the official layout; returns ``folder``.

    extra: more entries of the pickled dict (the official files also hold ``train_perf`` and
    ``test_perf``). The official code loads the result with its ``load_checkpoint``.
    """
    from dsm.core.energy import unwrap
    from dsm.plumbing.fileio import atomic_path

    args = official_args(cfg, shape)
    model = unwrap(model)
    ours = model.state_dict()
    state = {ok: ours[k].detach().cpu() for k, ok in key_map(model).items()}
    folder = Path(folder)
    with atomic_path(folder / ARGS_FILE) as tmp:
        tmp.write_text(json.dumps(args, indent=2) + "\n")
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        torch.save({"step": int(step), "args": argparse.Namespace(**args), "state_dict": state, **(extra or {})}, tmp)
    return folder


__all__ = ["OfficialCheckpointError", "OfficialModel", "StandIn", "read_args", "read_checkpoint", "train_config",
           "official_key", "key_map", "import_official", "export_official", "official_args"]
