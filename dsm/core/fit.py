"""Fit a model in-process on samples from a callable: the toys, the demo and the tests.

The one-process case of the Ray Train loop (dsm.train.loop): the same step
(:func:`dsm.core.step.train_step`), the same non-finite policy (:class:`dsm.core.step.NonFinitePolicy`),
with a progress bar, a cosine learning-rate decay and an optional weight EMA; without the
checkpoints, evaluations and reports that a run on Ray needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from dsm.core.noise import TSampler
from dsm.core.step import NonFinitePolicy, NonFiniteTraining, train_step, weight_ema

__all__ = ["FitResult", "NonFiniteTraining", "fit"]


@dataclass
class FitResult:
    model: nn.Module  # the EMA model when ema_decay is set, else the trained one
    losses: list[float]
    skipped: int


def fit(model: nn.Module, loss_fn, sample_data: Callable[[int, torch.Generator], torch.Tensor],
        sampler: TSampler, *, steps: int, batch_size: int = 512, lr: float = 1e-3,
        final_lr_fraction: float = 0.01, ema_decay: float | None = None, seed: int = 0,
        max_grad_norm: float | None = None, max_bad_steps: int = 10, progress: bool = True,
        desc: str = "fit") -> FitResult:
    """Train ``model`` for ``steps`` steps of Adam on fresh batches ``sample_data(B, gen)``.

    lr decays from ``lr`` to ``lr * final_lr_fraction`` on a cosine. Returns the EMA copy
    of the model when ``ema_decay`` is given (the raw model keeps training state).
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}")
    gen = torch.Generator().manual_seed(seed)  # the data's draws, on the CPU where sample_data's tensors are
    # The steps' noise and t draw on the model's device; on the CPU that is the same generator, as always.
    device = next(model.parameters()).device
    step_gen = gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * final_lr_fraction)
    ema = weight_ema(model, ema_decay)
    losses, policy = [], NonFinitePolicy(max_bad_steps)
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=1.0)
    for i in bar:
        x = sample_data(batch_size, gen).to(device)
        res = train_step(model, opt, loss_fn, x, sampler, generator=step_gen, scheduler=sched,
                         max_grad_norm=max_grad_norm, ema=ema)
        stop = policy.after_step(res.finite, i + 1)
        if stop:
            raise NonFiniteTraining(stop)
        if res.finite:
            losses.append(res.loss)
            if i % 100 == 0:
                bar.set_postfix(loss=f"{res.loss:.4f}")
    out = ema.module if ema is not None else model
    out.eval()
    return FitResult(out, losses, policy.skipped)
