"""One optimization step, shared by the in-process fitter and the Ray Train loop.

The step samples the noise itself (t from a sampler, z standard normal), so callers hand it
clean data only. Non-finite losses or gradients are detected and the update is skipped, so
that one bad batch never reaches the weights; the caller counts skips and decides when to
stop. Under DDP, pass ``all_finite`` (an all-reduce) so that every rank skips together.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dsm.losses import LossTerms
from dsm.noise import TSampler


def weight_ema(model: nn.Module, decay: float | None,
               warmup: bool = False) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of ``model``'s weights for :func:`train_step` (None
    when ``decay`` is None). Its ``.module`` is the averaged model.

    warmup: after n updates the decay is min(decay, (1 + n) / (10 + n)), so the average
    forgets the initial weights at the start of training. Without it, a decay of 0.999 still
    gives the weights of the first step 37% of the average after 1000 steps.
    """
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    if not decay:
        return None
    if not warmup:
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))

    @torch.no_grad()
    def warm_ema(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = float(n_averaged)  # updates so far; AveragedModel keeps it in its state dict, so resumes continue the ramp
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1.0 + n) / (10.0 + n)))

    return AveragedModel(model, multi_avg_fn=warm_ema)


@dataclass
class StepResult:
    """What one step did. loss: batch mean (nan when non-finite); terms: detached (B,)."""

    loss: float
    terms: LossTerms
    t: torch.Tensor
    finite: bool
    grad_norm: float


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[..., LossTerms],
               x: torch.Tensor, sampler: TSampler, *, generator: torch.Generator | None = None,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
               max_grad_norm: float | None = None, ema: torch.optim.swa_utils.AveragedModel | None = None,
               all_finite: Callable[[bool], bool] | None = None,
               all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> StepResult:
    """Sample (t, z), compute ``loss_fn(model, x, t, z)``, backpropagate once, update.

    x: (B, *event_shape) clean data. Double backpropagation happens inside the loss
    (``autograd.grad(create_graph=True)``); here there is one plain ``backward()``, which is
    what DDP supports. An adaptive sampler (``sampler.adaptive``, e.g. importance sampling of
    t) weights each example's loss and then observes the losses; ``all_reduce_sum`` (DDP)
    keeps its state equal on every rank.
    """
    model.train()
    n = x.shape[0]
    t = sampler(n, generator=generator, device=x.device).to(x.dtype)
    adaptive = getattr(sampler, "adaptive", False)
    weights = sampler.weights(t) if adaptive else None
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if getattr(loss_fn, "needs_generator", False):
        terms = loss_fn(model, x, t, z, generator=generator)
    else:
        terms = loss_fn(model, x, t, z)
    # Importance weights keep the batch mean an unbiased estimate of the same objective.
    loss = (terms.total * weights).mean() if weights is not None else terms.total.mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm else math.inf)
    finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm))
    if all_finite is not None:
        finite = all_finite(finite)
    if finite:
        if adaptive:
            sampler.observe(t, terms.total.detach(), all_reduce=all_reduce_sum)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
    else:
        optimizer.zero_grad(set_to_none=True)
    detached = LossTerms(terms.total.detach(), terms.dsm.detach(),
                         None if terms.tsm is None else terms.tsm.detach(),
                         None if terms.heat is None else terms.heat.detach())
    return StepResult(float(loss.detach()) if finite else math.nan, detached, t.detach(), finite, float(grad_norm))
