"""Held-out evaluation during training (no Ray, no MLflow): one call, a flat metrics dict.

Run on rank 0 on the *unwrapped* model (evaluation under DDP would need every rank to make
the same calls). All noise is seeded from the example keys, so two evaluations of the same
weights give the same numbers, whatever the batch size.

Metrics (names as logged; nats unless said):

- ``eval/loss`` and ``eval/loss_band{i}``: the training loss at t drawn log-uniformly within
  each of ``BANDS`` equal log-width bands of [t_min, t_max] (``eval/dsm``, ``eval/tsm`` too).
- ``eval/loss_train_t_dist``: the training loss with one t per example drawn from the training
  objective's t law, log-uniform on [t_min, t_max] (the official code's "test loss"). Every
  registered sampler targets that law (importance sampling reweights to it). ``eval/loss``
  estimates the same expectation, stratified over the bands with every example in each band.
- ``eval/psnr_out_in{p}dB``: the paper's output PSNR of the denoiser at input PSNR p, the PSNR
  of the MSE averaged over images (:func:`dsm.core.noise.psnr_of_mean_mse`);
  ``eval/psnr_out_mean_per_image_in{p}dB``: the mean of per-image PSNRs, which is higher.
- energies only: ``eval/log_z`` and ``eval/log_z_stderr`` (paired estimator at t = log_z_t),
  ``eval/nll_bpd`` (8-bit convention for 8-bit images, plain bits/dim otherwise) and
  ``eval/nll_bpd_stderr``.
- energies only, when asked (``consistency=``): the ``consistency/*`` self-consistency metrics
  of :mod:`dsm.core.consistency` (log Z spread over large t, energy vs PF-ODE gap, heat-equation
  residual per band, near-Gaussian Laplacian), the heat bands being ``BANDS`` above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dsm.core import consistency as cons
from dsm.core import noise, units
from dsm.core.energy import Energy
from dsm.core.losses import BANDS, band_edges
from dsm.core.normalize import LogZ, estimate_log_z
from dsm.core.seeding import keyed_normal, keyed_uniform


@dataclass
class EvalResult:
    metrics: dict[str, float]
    log_z: LogZ | None
    band_edges: list[float]
    denoised: dict[float, torch.Tensor]  # input PSNR -> (k, *shape) denoised examples (for the grid)


def _denoise(model: nn.Module, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if isinstance(model, Energy):
        with torch.enable_grad():
            return model.denoise(y, t).detach()
    with torch.no_grad():
        return model.denoise(y, t)


def consistency_options(eval_cfg) -> cons.Options | None:
    """The consistency checks an ``eval`` config section (:class:`dsm.train.config.EvalConfig`)
    asks for, or None when ``eval.consistency`` is off."""
    if not eval_cfg.consistency:
        return None
    return cons.Options(log_z_ts=tuple(eval_cfg.log_z_ts) if eval_cfg.log_z_ts else None,
                        ode_images=eval_cfg.ode_images, ode_steps=eval_cfg.ode_steps,
                        heat_examples=eval_cfg.heat_examples, hutchinson_probes=eval_cfg.hutchinson_probes)


def metric_names(*, energy: bool, psnrs: list[float], consistency: cons.Options | None = None,
                 t_max: float | None = None) -> set[str]:
    """The keys :func:`evaluate` returns for an energy (or score) model and these input PSNRs;
    with ``consistency`` also the consistency metrics (their log Z names need ``t_max``)."""
    names = {f"eval/loss_band{i}" for i in range(BANDS)} | {"eval/loss", "eval/dsm", "eval/loss_train_t_dist"}
    names |= {f"eval/psnr_out_in{p:g}dB" for p in psnrs} | {f"eval/psnr_out_mean_per_image_in{p:g}dB" for p in psnrs}
    if energy:
        names |= {"eval/tsm", "eval/log_z", "eval/log_z_stderr", "eval/nll_bpd", "eval/nll_bpd_stderr"}
        if consistency is not None:
            if t_max is None:
                raise ValueError("metric_names needs t_max to name the consistency metrics")
            names |= cons.metric_names(consistency, t_max=t_max, bands=BANDS)
    return names


def _keyed_log_uniform(keys: list[str], lo: float, hi: float, salt: str) -> torch.Tensor:
    """One t per example key, log-uniform on [lo, hi], (n,) float64: the same t whatever the batch."""
    u = keyed_uniform(keys, (), salt, dtype=torch.float64)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def _loss_terms(model: nn.Module, x: torch.Tensor, keys: list[str], t_all: torch.Tensor, *, loss_fn, salt: str,
                batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-example (total, dsm, tsm or None) losses, each (n,), at noise variances ``t_all`` (n,)
    with z seeded by key and ``salt``."""
    total, dsms, tsms = [], [], []
    for a in range(0, x.shape[0], batch_size):
        xb, tb = x[a:a + batch_size], t_all[a:a + batch_size].to(device=x.device, dtype=x.dtype)
        z = keyed_normal(keys[a:a + batch_size], tuple(x.shape[1:]), salt=salt, dtype=x.dtype, device=x.device)
        with torch.enable_grad():
            terms = loss_fn(model, xb, tb, z)
        total.append(terms.total.detach())
        dsms.append(terms.dsm.detach())
        if terms.tsm is not None:
            tsms.append(terms.tsm.detach())
    return torch.cat(total), torch.cat(dsms), (torch.cat(tsms) if tsms else None)


def _loss_metrics(model, x, keys, *, loss_fn, edges: list[float], batch_size: int) -> dict[str, float]:
    """``eval/loss``, ``eval/loss_band{i}``, ``eval/dsm``, ``eval/tsm`` and ``eval/loss_train_t_dist``."""
    metrics: dict[str, float] = {}
    totals, dsms, tsms = [], [], []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        t_all = _keyed_log_uniform(keys, lo, hi, f"eval-band{i}")
        total, dsm_, tsm = _loss_terms(model, x, keys, t_all, loss_fn=loss_fn, salt=f"eval-z{i}", batch_size=batch_size)
        totals.append(total)
        dsms.append(dsm_)
        if tsm is not None:
            tsms.append(tsm)
        metrics[f"eval/loss_band{i}"] = float(total.mean())
    metrics["eval/loss"] = float(torch.cat(totals).mean())
    metrics["eval/dsm"] = float(torch.cat(dsms).mean())
    if tsms:
        metrics["eval/tsm"] = float(torch.cat(tsms).mean())
    # One t per example over the whole range, as the official code's test loss draws it.
    t_train = _keyed_log_uniform(keys, edges[0], edges[-1], "eval-train-t")
    total, _, _ = _loss_terms(model, x, keys, t_train, loss_fn=loss_fn, salt="eval-train-t-z", batch_size=batch_size)
    metrics["eval/loss_train_t_dist"] = float(total.mean())
    return metrics


def _psnr_metrics(model, x, keys, psnrs: list[float], *, batch_size: int,
                  grid_examples: int) -> tuple[dict[str, float], dict[float, torch.Tensor]]:
    """Output PSNR at each input PSNR in both conventions, and a few denoised examples per PSNR."""
    metrics: dict[str, float] = {}
    denoised: dict[float, torch.Tensor] = {}
    for p in psnrs:
        t = float(noise.psnr_to_t(p))
        mse = []
        for a in range(0, x.shape[0], batch_size):
            xb = x[a:a + batch_size]
            z = keyed_normal(keys[a:a + batch_size], tuple(x.shape[1:]), salt="eval-psnr", dtype=x.dtype,
                             device=x.device)
            tb = torch.full((xb.shape[0],), t, dtype=x.dtype, device=x.device)
            db = _denoise(model, xb + math.sqrt(t) * z, tb)
            mse.append((db - xb).flatten(1).double().square().mean(1).cpu())
            if a == 0 and grid_examples:
                denoised[p] = db[:grid_examples].cpu()
        mse_all = torch.cat(mse)
        metrics[f"eval/psnr_out_in{p:g}dB"] = noise.psnr_of_mean_mse(mse_all)
        metrics[f"eval/psnr_out_mean_per_image_in{p:g}dB"] = noise.mean_psnr_per_image(mse_all)
    return metrics, denoised


def evaluate(model: nn.Module, x: torch.Tensor, keys: list[str], *, loss_fn, t_min: float, t_max: float,
             psnrs: list[float], log_z_t: float | None, eight_bit: bool, batch_size: int = 256,
             grid_examples: int = 0, consistency: cons.Options | None = None) -> EvalResult:
    """Evaluate ``model`` on held-out ``x`` (N, *event_shape) with per-example ``keys``.

    eight_bit: x holds k/255 pixel values, so the NLL uses the 8-bit convention.
    grid_examples: keep this many denoised examples per PSNR for a figure.
    consistency: also the ``consistency/*`` metrics of an energy (:func:`consistency_options`).
    """
    was_training = model.training
    model.eval()
    n, d = x.shape[0], math.prod(x.shape[1:])
    edges = band_edges(t_min, t_max)
    metrics = _loss_metrics(model, x, keys, loss_fn=loss_fn, edges=edges, batch_size=batch_size)
    psnr_metrics, denoised = _psnr_metrics(model, x, keys, psnrs, batch_size=batch_size, grid_examples=grid_examples)
    metrics.update(psnr_metrics)

    log_z = None
    if isinstance(model, Energy):
        log_z = estimate_log_z(model, x, log_z_t or t_max, keys=keys, batch_size=batch_size)
        model.log_z.fill_(log_z.value)
        logp = torch.cat([model.log_prob(x[a:a + batch_size]) for a in range(0, n, batch_size)]).cpu()
        nll = units.nll_bpd_8bit(logp, d) if eight_bit else units.bits_per_dim(logp, d)
        metrics.update({"eval/log_z": log_z.value, "eval/log_z_stderr": log_z.stderr,
                        "eval/nll_bpd": float(nll.mean()), "eval/nll_bpd_stderr": float(nll.std() / math.sqrt(n))})
        if consistency is not None:
            metrics.update(cons.check(model, x, keys, band_edges=edges, options=consistency,
                                      batch_size=batch_size).metrics())
    model.train(was_training)
    return EvalResult(metrics, log_z, edges, denoised)


def denoising_figure(x: torch.Tensor, denoised: dict[float, torch.Tensor], path: str) -> str:
    """A PNG grid: clean held-out images (top row), then the denoiser's output at each input PSNR."""
    from dsm.plumbing.plots import pyplot, save_figure

    plt = pyplot()

    levels = sorted(denoised, reverse=True)
    k = x.shape[0]
    fig, axes = plt.subplots(len(levels) + 1, k, figsize=(1.1 * k, 1.1 * (len(levels) + 1)), squeeze=False)
    rows = [("clean", x)] + [(f"{p:g} dB", denoised[p]) for p in levels]
    for r, (label, imgs) in enumerate(rows):
        for c in range(k):
            ax = axes[r][c]
            img = imgs[c].clamp(0, 1).numpy()
            ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle("denoised held-out examples by input PSNR", fontsize=8)
    save_figure(fig, path)
    return path
