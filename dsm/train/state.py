"""What a training checkpoint holds, and how it is written to and read from a folder (no Ray).

One file, ``state.pt``, in the checkpoint folder that Ray Train persists:

- ``model``, ``optimizer``, ``scheduler``: state dicts (the model unwrapped from DDP);
- ``step``: optimization steps taken (skipped non-finite steps included: it is the number of
  batches each rank has consumed, which is also the data position);
- ``data``: the data position spelled out (epoch, batch offset in it, batches per epoch,
  world size), for people reading a checkpoint;
- ``rng``: the torch CPU RNG state. The training noise itself needs no saved state: step k
  of rank r draws from a generator seeded by (seed, rank, k), so it is the same after a resume;
- ``skipped`` / ``bad_run``: non-finite steps in total and in a row;
- ``mlflow_run_id``: the run a resumed job keeps logging to;
- ``pending``: metric rows not yet confirmed in MLflow when the checkpoint was written;
- ``config``: the resolved training config;
- ``sampler``: an adaptive t sampler's state (importance sampling), else None;
- ``ema``: the weight EMA's state dict (``optim.ema_decay``), else None;
- ``best``: the best held-out evaluation so far, ``{"nll_bpd", "step"}`` (the model then
  written to ``model-best.pt``), else None (absent in checkpoints of dsm <= 0.13).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dsm.core.step import NonFinitePolicy
from dsm.plumbing.fileio import load_torch_file

STATE_FILE = "state.pt"


@dataclass
class TrainState:
    """A worker's counters. ``nonfinite``: the non-finite policy, whose counts are checkpointed
    (its ``max_bad_steps`` comes from the config, not the checkpoint)."""

    step: int = 0
    nonfinite: NonFinitePolicy = field(default_factory=lambda: NonFinitePolicy(max_bad_steps=1))
    mlflow_run_id: str | None = None
    pending: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    best_nll_bpd: float | None = None  # lowest eval/nll_bpd so far, and the step it was measured at
    best_step: int | None = None


def save_state(folder: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: Any, state: TrainState, config: dict, batches_per_epoch: int, world_size: int,
               sampler: Any = None, ema: torch.nn.Module | None = None) -> Path:
    """Write ``state.pt`` into ``folder`` (which must exist); returns its path."""
    path = Path(folder) / STATE_FILE
    blob = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "step": state.step, "skipped": state.nonfinite.skipped, "bad_run": state.nonfinite.bad_run,
        "data": {"epoch": state.step // batches_per_epoch, "offset": state.step % batches_per_epoch,
                 "batches_per_epoch": batches_per_epoch, "world_size": world_size},
        "rng": torch.get_rng_state(), "mlflow_run_id": state.mlflow_run_id,
        "pending": [(s, dict(m)) for s, m in state.pending], "config": config,
        "sampler": sampler.state_dict() if getattr(sampler, "adaptive", False) else None,
        "ema": ema.state_dict() if ema is not None else None,
        "best": ({"nll_bpd": state.best_nll_bpd, "step": state.best_step} if state.best_step is not None else None),
    }
    torch.save(blob, path)
    return path


def load_state(folder: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: Any, sampler: Any = None, ema: torch.nn.Module | None = None,
               nonfinite: NonFinitePolicy | None = None) -> tuple[TrainState, dict]:
    """Restore model, optimizer and scheduler (and a weight EMA, and the non-finite policy's
    counts) in place from ``folder/state.pt``; returns the counters and the raw blob (for its
    ``data`` and ``config`` entries).

    An EMA asked for but absent from the checkpoint (``optim.ema_decay`` added on resume)
    restarts from the restored weights, with a warning.

    The file is always read onto the CPU, whatever device the model is on: each
    ``load_state_dict`` then puts its tensors where a fresh run has them. The model's and EMA's
    copy into their parameters; the optimizer's moments go to their parameter's device, and
    Adam's ``step`` counters stay on the CPU (torch moves them only for a fused or capturable
    optimizer). A counter on the GPU would make foreach Adam read it back to the host for
    every parameter at every step; the RNG state must be a CPU tensor, and the t sampler's
    state is too.
    """
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint has no {STATE_FILE}")
    # weights_only: a state.pt handed over (or swapped into the run folder) must not run code on resume
    blob = load_torch_file(path, "dsm training checkpoint", "cpu")
    model.load_state_dict(blob["model"])
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["rng"])
    if getattr(sampler, "adaptive", False):
        if blob.get("sampler") is None:
            raise ValueError(f"{path}: the config samples t adaptively but the checkpoint holds no sampler state")
        sampler.load_state_dict(blob["sampler"])
    if ema is not None:
        if blob.get("ema") is None:
            warnings.warn(f"{path}: the checkpoint holds no weight EMA; the EMA restarts from its weights",
                          stacklevel=2)
            ema.module.load_state_dict(model.state_dict())
        else:
            ema.load_state_dict(blob["ema"])
    best = blob.get("best") or {}
    nonfinite = nonfinite or NonFinitePolicy(max_bad_steps=1)
    nonfinite.skipped, nonfinite.bad_run = int(blob["skipped"]), int(blob["bad_run"])
    state = TrainState(step=int(blob["step"]), nonfinite=nonfinite, mlflow_run_id=blob.get("mlflow_run_id"),
                       pending=[(int(s), m) for s, m in blob["pending"]],
                       best_nll_bpd=best.get("nll_bpd"), best_step=best.get("step"))
    return state, blob
