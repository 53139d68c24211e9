"""The exported model: one file holding the weights and everything needed to rebuild them.

``dsm train`` writes a bundle at the end of a run; ``dsm normalize``, ``dsm score`` and
notebook users read it with :func:`load_model`. A bundle is a ``torch.save`` dict:

- ``format`` / ``version``: ``"dsm-model"`` / 2 (version 1 is read too: its ``paper`` UNet
  preset was dsm's variant of the paper's network, now called ``paper-dsm``);
- ``config``: the resolved training config (``TrainConfig.model_dump(mode="json")``);
- ``shape``: the event shape, (C, H, W) or (d,); ``is_image``;
- ``eight_bit``: the model was trained on 8-bit images (pixel values k/255), so its NLL is
  reported in the 8-bit convention (decided by ``dsm.data.stream.is_eight_bit`` at training
  time; a bundle written before this key existed reads as ``is_image``);
- ``state_dict``: the weights (an energy's ``log_z`` buffer included, in nats);
- ``normalization``: how log Z was estimated (value, stderr, t, n, method), or None;
- ``meta``: free-form provenance (run name, step, MLflow run id, git commit, ...).

Writes are atomic (a temporary file renamed into place), so a crash never leaves half a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsm.core.models import DataShape, ModelConfig, from_config
from dsm.plumbing.fileio import atomic_path, load_torch_file

FORMAT, VERSION = "dsm-model", 2


@dataclass
class Bundle:
    """A model file read back. ``config`` is the resolved training config as stored (JSON;
    ``dsm.train.config.TrainConfig.model_validate`` reads it), upgraded to this dsm's names."""

    model: nn.Module
    config: dict
    shape: tuple[int, ...]
    is_image: bool
    normalization: dict | None = None
    meta: dict = field(default_factory=dict)
    eight_bit: bool = False  # trained on 8-bit images: the NLL's convention

    @cached_property  # validated once: callers ask for it per use
    def model_config(self) -> ModelConfig:
        return ModelConfig.model_validate(self.config.get("model", {}))

    @property
    def t_range(self) -> tuple[float, float]:
        """[t_min, t_max] of the noise variances the model was trained on."""
        return float(self.config["noise"]["t_min"]), float(self.config["noise"]["t_max"])


def save_bundle(path: str | Path, model: nn.Module, config: Any, shape: tuple[int, ...], is_image: bool,
                normalization: dict | None = None, meta: dict | None = None, eight_bit: bool | None = None) -> Path:
    """Write ``model`` (unwrapped, on CPU) and its config (a TrainConfig, or its JSON dict) to
    ``path`` atomically; returns the path. eight_bit: trained on 8-bit images (default: is_image)."""
    from dsm.core.energy import unwrap

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    config = config if isinstance(config, dict) else config.model_dump(mode="json")
    blob = {"format": FORMAT, "version": VERSION, "config": config,
            "shape": list(shape), "is_image": bool(is_image),
            "eight_bit": bool(is_image if eight_bit is None else eight_bit), "state_dict": state,
            "normalization": normalization, "meta": dict(meta or {})}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return path


def _upgrade_config(config: dict, version: int) -> dict:
    """The config of an older bundle, as this dsm names the same model."""
    if version < 2 and config.get("model", {}).get("preset") == "paper":
        # version 1's `paper` preset is the function now called `paper-dsm` (docs/unet.md)
        config = {**config, "model": {**config["model"], "preset": "paper-dsm"}}
    return config


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> Bundle:
    """Read a bundle and rebuild its model (in eval mode). Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    blob = load_torch_file(path, "dsm model", map_location)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else "?"
        raise ValueError(f"{path}: not a dsm model bundle (format {found})")
    if blob["version"] > VERSION:
        raise ValueError(f"{path}: bundle version {blob['version']} is newer than this dsm reads ({VERSION})")
    config = _upgrade_config(blob["config"], blob["version"])
    try:
        model_cfg = ModelConfig.model_validate(config.get("model", {}))
        t_min, t_max = float(config["noise"]["t_min"]), float(config["noise"]["t_max"])
    except (ValueError, KeyError, TypeError) as e:
        why = str(e).splitlines()[0]
        raise ValueError(f"{path}: its model description is not one this dsm reads ({why})") from None
    shape = DataShape(tuple(blob["shape"]), blob["is_image"])
    model = from_config(model_cfg, shape, t_min=t_min, t_max=t_max)
    model.load_state_dict(blob["state_dict"])
    model.to(map_location).eval()
    return Bundle(model, config, shape.shape, shape.is_image, blob.get("normalization"), blob.get("meta", {}),
                  bool(blob.get("eight_bit", shape.is_image)))
