"""One optimization step, and the rules around it, shared by the in-process fitter
(``dsm.core.fit``) and the Ray Train loop (``dsm.train.loop``).

The step samples the noise itself (t from a sampler, z standard normal), so callers hand it
clean data only. Non-finite losses or gradients are detected and the update is skipped, so
that one bad batch never reaches the weights; :class:`NonFinitePolicy` counts skips and says
when to stop. Under DDP, :class:`Collectives` supplies the all-reduces, so that every rank
skips together (docs/design.md section 7).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dsm.core.losses import LossTerms
from dsm.core.noise import TSampler


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


class NonFiniteTraining(RuntimeError):
    """Training produced non-finite losses or gradients too many steps in a row."""

    exit_status = 3  # dsm.plumbing.errors.exit_code: distinct from bad input (2) and a crash (1)


@dataclass
class NonFinitePolicy:
    """The one non-finite policy: a step whose loss, gradients or inputs are not finite (on any
    rank) is skipped, and training stops after ``max_bad_steps`` such steps in a row.
    ``skipped`` / ``bad_run``: counts in total and in a row (kept in checkpoints)."""

    max_bad_steps: int
    skipped: int = 0
    bad_run: int = 0

    def after_step(self, finite: bool, step: int) -> str | None:
        """Count step ``step``; returns why to stop (a sentence) or None."""
        if finite:
            self.bad_run = 0
            return None
        self.skipped += 1
        self.bad_run += 1
        if self.bad_run < self.max_bad_steps:
            return None
        return (f"{self.bad_run} non-finite steps in a row (last at step {step}): stopping. Lower the learning "
                "rate (optim.lr), raise noise.t_min, or set optim.max_grad_norm")


@dataclass(frozen=True)
class Collectives:
    """The all-reduces that keep ranks in step (torch.distributed, already initialised, when
    ``world`` > 1; plain values for one process). Every rank must call each method at the same
    point of the same step."""

    world: int = 1
    device: torch.device | str = "cpu"

    def all_finite(self, ok: bool) -> bool:
        """True when ``ok`` on every rank (a MIN all-reduce)."""
        if self.world == 1:
            return ok
        flag = torch.tensor([1.0 if ok else 0.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def sum(self, *values: float) -> list[float]:
        """Each value summed over ranks (float64)."""
        v = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(v)
        return v.tolist()

    def sum_tensor(self, v: torch.Tensor) -> torch.Tensor:
        """A tensor summed over ranks, returned on the CPU (an adaptive t sampler's per-bin sums)."""
        if self.world == 1:
            return v
        w = v.to(self.device)
        torch.distributed.all_reduce(w)
        return w.cpu()


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
