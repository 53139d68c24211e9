"""The per-worker training function that Ray Train runs on every rank.

It is thin over the core: the data issue's :class:`TrainStream`, the core's
:func:`dsm.step.train_step` (unchanged), :func:`dsm.train.evaluate.evaluate`, and a checkpoint
folder per report. Invariants that keep DDP and ``ray.train.report`` (a barrier) safe:

- every rank runs the same number of steps (``cfg.steps``; a skipped non-finite step counts);
- every rank calls ``ray.train.report`` at the same steps; only rank 0 attaches a checkpoint;
- the non-finite decision is all-reduced, so all ranks skip, and stop, together;
- evaluation, export and MLflow run on rank 0 only, on the model unwrapped from DDP.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import torch

from dsm.bundle import save_bundle
from dsm.data.stream import EvalStream, TrainStream, is_eight_bit, make_loader, open_source
from dsm.energy import Energy, unwrap
from dsm.losses import loss_by_band
from dsm.seeding import key_seed
from dsm.step import train_step
from dsm.train import build
from dsm.train.config import TrainConfig
from dsm.train.evaluate import BANDS, consistency_options, denoising_figure, evaluate
from dsm.train.runlog import RunLog
from dsm.train.state import TrainState, load_state, save_state


def _batches(stream: TrainStream, loader_workers: int, start_step: int) -> Iterator[dict]:
    """Batches forever from the data position of ``start_step`` (epoch, offset within it)."""
    per_epoch = stream.batches_per_epoch(loader_workers)
    epoch, offset = divmod(start_step, per_epoch)
    while True:
        stream.set_epoch(epoch)
        it = iter(make_loader(stream, loader_workers))
        yield from islice(it, offset, None)
        offset, epoch = 0, epoch + 1


def _held_out(cfg: TrainConfig, device: torch.device) -> tuple[torch.Tensor, list[str]]:
    """The first ``eval.samples`` held-out examples, in manifest order, and their keys."""
    xs, keys = [], []
    for b in EvalStream(cfg.data.eval_path, batch_size=256, rank=0, world_size=1, on_error=cfg.data.on_error):
        xs.append(b["x"])
        keys += b["key"]
        if len(keys) >= cfg.eval.samples:
            break
    x = torch.cat(xs)[:cfg.eval.samples]
    return build.model_input(cfg, x).to(device), keys[:cfg.eval.samples]


def _band_means(t: torch.Tensor, values: torch.Tensor, edges: list[float]) -> dict[str, float]:
    """Rank 0's mean training loss per noise band (the same bands as the evaluation)."""
    return {f"train/loss_band{i}": mean for i, (mean, _) in loss_by_band(t, values, edges).items()}


# Ray Train's pages of traceback on the driver's console for a failure that dsm reports in one
# line (and keeps whole in the run's error.log): each rank's "Error in training function" (the
# surviving rank's, when another was killed), and the controller's teardown of a dead group.
RAY_TRAIN_TRACEBACKS = ("Error in training function", "Graceful shutdown of backend failed")


def _not_a_ray_train_traceback(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(RAY_TRAIN_TRACEBACKS)


def quiet_ray_train_logs() -> None:
    """In a Ray Train worker or controller: Ray Train logs every report (all metrics) at INFO
    from the worker, which drowns the progress lines, and the tracebacks above. Its loggers
    carry their own levels, so each one is raised and filtered. Some are named by their file
    path (``logging.getLogger(__file__)``, as Train V2's report logger is)."""
    path_part = f"{os.sep}ray{os.sep}train{os.sep}"
    for name in ["ray.train", *[n for n in logging.root.manager.loggerDict
                                if n.startswith("ray.train") or path_part in n]]:
        log = logging.getLogger(name)
        log.setLevel(logging.WARNING)
        if _not_a_ray_train_traceback not in log.filters:
            log.addFilter(_not_a_ray_train_traceback)


def _say(line: str, err: bool = False) -> None:
    """Write a line directly: Ray Train patches ``print`` to also log it, which doubles it."""
    stream = sys.stderr if err else sys.stdout
    stream.write(line + "\n")
    stream.flush()


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def reported_metrics(cfg: TrainConfig) -> set[str]:
    """The metrics each checkpoint's ``ray.train.report`` carries (what Tune can schedule on)."""
    names = {"step", "skipped"}
    if cfg.eval.enabled:
        from dsm.train.evaluate import metric_names

        names |= metric_names(energy=cfg.model.kind == "energy", psnrs=cfg.eval.psnrs,
                              consistency=consistency_options(cfg.eval), t_max=cfg.noise.t_max)
    return names


def train_loop(config: dict) -> None:
    """Ray Train's ``train_loop_per_worker``. ``config``: ``cfg`` (TrainConfig as JSON),
    ``run_name``, ``tracking_uri``, ``mlflow_run_id`` (or None), ``export_path``, ``tags``."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(config["cfg"])
    quiet_ray_train_logs()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    device = ray.train.torch.get_device()
    shape = build.data_shape(open_source(cfg.data.path))
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and in every repeat of the run
    model = build.build_model(cfg, shape).to(device)
    opt, sched = build.build_optimizer(cfg, model)
    ema = build.build_ema(cfg, model) if rank == 0 else None  # only rank 0 evaluates and exports
    stream = TrainStream(cfg.data.path, batch_size=cfg.per_worker_batch, mode=cfg.data.mode, seed=cfg.seed,
                         rank=rank, world_size=world, loader_workers=cfg.data.loader_workers,
                         shuffle_buffer=cfg.data.shuffle_buffer, flips=cfg.data.flips, on_error=cfg.data.on_error)
    per_epoch = stream.batches_per_epoch(cfg.data.loader_workers)

    loss_fn, sampler = build.build_loss(cfg), build.build_sampler(cfg)
    state = TrainState(mlflow_run_id=config.get("mlflow_run_id"))
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as folder:
            state, _ = load_state(folder, model=model, optimizer=opt, scheduler=sched, map_location=device,
                                  sampler=sampler, ema=ema)
        if rank == 0:
            _say(f"dsm train: resumed {config['run_name']} at step {state.step}/{cfg.steps}")
    log = RunLog(state.mlflow_run_id, config["tracking_uri"]) if rank == 0 else RunLog(None, "")
    if rank == 0 and log.enabled:
        log.resume()
        log.flush(state.pending)  # rows a crash may have kept from MLflow
        state.pending = []
        log.tags({"dsm.device": torch.cuda.get_device_name(device) if device.type == "cuda" else
                  f"cpu x {world} worker(s)"})

    net = model
    if world > 1:
        net = ray.train.torch.prepare_model(model, move_to_device=False)

    def all_finite(ok: bool) -> bool:
        """True when every rank's loss, gradients and inputs are finite (an all-reduce)."""
        if world == 1:
            return ok
        flag = torch.tensor([1.0 if ok else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def all_ranks_sum(*values: float) -> list[float]:
        v = torch.tensor(values, dtype=torch.float64, device=device)
        if world > 1:
            torch.distributed.all_reduce(v)
        return v.tolist()

    def all_ranks_sum_tensor(v: torch.Tensor) -> torch.Tensor:
        """An adaptive t sampler's per-bin sums, added across ranks (same state everywhere)."""
        if world == 1:
            return v
        w = v.to(device)
        torch.distributed.all_reduce(w)
        return w.cpu()

    edges = torch.logspace(math.log10(cfg.noise.t_min), math.log10(cfg.noise.t_max), BANDS + 1).tolist()
    held = _held_out(cfg, device) if rank == 0 and (cfg.eval.enabled or isinstance(model, Energy)) else None
    run_dir = Path(config["export_path"]).parent
    eight_bit = is_eight_bit(open_source(cfg.data.eval_path))

    final = ema.module if ema is not None else model  # what is evaluated, normalized and exported

    def run_eval(step: int) -> dict[str, float]:
        res = evaluate(final, held[0], held[1], loss_fn=loss_fn, t_min=cfg.noise.t_min, t_max=cfg.noise.t_max,
                       psnrs=cfg.eval.psnrs if cfg.eval.enabled else [],
                       log_z_t=cfg.eval.log_z_t, eight_bit=eight_bit, batch_size=cfg.eval.batch_size,
                       grid_examples=8 if cfg.eval.grid and cfg.model.arch == "unet" else 0,
                       consistency=consistency_options(cfg.eval))
        if res.denoised:
            fig = denoising_figure(held[0][:8].cpu(), res.denoised,
                                   str(run_dir / "figures" / f"denoised_{step:08d}.png"))
            log.artifact(fig, "figures")
        _keep_best(cfg, config, final, shape, res, state, step)
        return res.metrics

    batches = _batches(stream, cfg.data.loader_workers, state.step)
    window = {"loss": 0.0, "n": 0, "t": [], "terms": [], "heat": [], "grad": 0.0, "images": 0, "busy": 0.0, "steps": 0}
    t_start, step_start, t_window = time.time(), state.step, time.time()
    stopped, finalized = None, False
    while state.step < cfg.steps:
        t_step = time.perf_counter()
        batch = next(batches)
        x = build.model_input(cfg, batch["x"]).to(device, non_blocking=True)
        input_ok = bool(torch.isfinite(x).all())
        if not input_ok:  # every rank must still take part in the step's collectives, so zero the
            x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)  # batch and veto the update
            _say(f"dsm train: rank {rank}: non-finite values in the input batch at step {state.step + 1} "
                 f"(keys {batch['key'][:3]}...)", err=True)
        gen = torch.Generator(device=device).manual_seed(key_seed(state.step, f"train/{cfg.seed}/{rank}"))
        res = train_step(net, opt, loss_fn, x, sampler, generator=gen, scheduler=sched,
                         max_grad_norm=cfg.optim.max_grad_norm, ema=ema,
                         all_finite=lambda ok: all_finite(ok and input_ok),  # noqa: B023 - called at once, in this step
                         all_reduce_sum=all_ranks_sum_tensor)
        state.step += 1
        step = state.step
        window["busy"] += time.perf_counter() - t_step
        if res.finite:
            state.bad_run = 0
            window["loss"] += res.loss
            window["n"] += 1
            window["grad"] += res.grad_norm
            window["t"].append(res.t.cpu())
            window["terms"].append(res.terms.total.cpu())
            if res.terms.heat is not None:
                window["heat"].append(res.terms.heat.cpu())
        else:
            state.skipped += 1
            state.bad_run += 1
            if rank == 0:
                _say(f"dsm train: non-finite loss or gradient at step {step} on some rank; update skipped "
                     f"({state.bad_run} in a row, {state.skipped} in total)", err=True)
                state.pending.append((step, {"train/nonfinite_skipped": float(state.skipped)}))
            if state.bad_run >= cfg.optim.max_bad_steps:
                stopped = (f"{state.bad_run} non-finite steps in a row (last at step {step}): stopping. "
                           "Lower optim.lr, raise noise.t_min, or set optim.max_grad_norm")
        window["images"] += x.shape[0] * world
        window["steps"] += 1

        if step % cfg.log_every == 0 or step == cfg.steps or stopped:
            loss_sum, n = all_ranks_sum(window["loss"], float(window["n"]))
            if rank == 0:
                now = time.time()
                ips = window["images"] / max(now - t_window, 1e-9)
                rate = (step - step_start) / max(now - t_start, 1e-9)
                row = {"train/loss": loss_sum / max(n, 1), "train/lr": opt.param_groups[0]["lr"],
                       "train/grad_norm": window["grad"] / max(window["n"], 1), "train/images_per_s": ips,
                       # batch fetch + step, rank 0: what benchmarks/ray_overhead.py compares
                       "train/step_s": window["busy"] / max(window["steps"], 1)}
                if window["t"]:
                    row.update(_band_means(torch.cat(window["t"]), torch.cat(window["terms"]), edges))
                if window["heat"]:  # rank 0's mean of the (unbiased) squared heat residual
                    row["train/heat_residual_sq"] = float(torch.cat(window["heat"]).mean())
                if n > 0:
                    state.pending.append((step, row))
                _say(f"step {step}/{cfg.steps}  loss {row['train/loss']:.4g}  {ips:.0f} img/s  "
                     f"eta {_fmt_eta((cfg.steps - step) / max(rate, 1e-9))}")
            window = {"loss": 0.0, "n": 0, "t": [], "terms": [], "heat": [], "grad": 0.0, "images": 0, "busy": 0.0,
                      "steps": 0}
            t_window = time.time()

        if stopped:
            break
        if step % cfg.checkpoint.every == 0 or step == cfg.steps:
            metrics: dict = {"step": step, "skipped": state.skipped}
            with tempfile.TemporaryDirectory(prefix="dsm-ckpt-") as tmp:
                checkpoint = None
                if rank == 0:
                    if cfg.eval.enabled and held is not None:
                        ev = run_eval(step)
                        state.pending.append((step, ev))
                        metrics.update(ev)
                    save_state(tmp, model=unwrap(net), optimizer=opt, scheduler=sched, state=state,
                               config=config["cfg"], batches_per_epoch=per_epoch, world_size=world, sampler=sampler,
                               ema=ema)
                    checkpoint = ray.train.Checkpoint.from_directory(tmp)
                    if step == cfg.steps:
                        # Finish before the last report: a scheduler that stops the trial on
                        # its final result (ASHA at max_t) would otherwise cut the export.
                        log.flush(state.pending)
                        state.pending = []
                        _finalize(cfg, config, final, shape, held, log, state)
                        finalized = True
                ray.train.report(metrics, checkpoint=checkpoint)
            if rank == 0:
                log.flush(state.pending)
                state.pending = []

    if rank != 0 or finalized:
        return
    if stopped:
        log.flush(state.pending)
        log.tags({"dsm.status": "non_finite", "dsm.stop_reason": stopped})
        log.finish("FAILED")
        _say(f"dsm train: {stopped}", err=True)
        _write_status(run_dir, "non_finite", stopped)
        return
    _finalize(cfg, config, final, shape, held, log, state)


BEST_FILE = "model-best.pt"
SELECTED_BY = "eval/nll_bpd"  # model selection: the normalized held-out NLL, lower is better


def _keep_best(cfg: TrainConfig, config: dict, model: torch.nn.Module, shape: build.DataShape, res,
               state: TrainState, step: int) -> None:
    """Rank 0 after an evaluation: when the held-out NLL is the lowest so far, export the model
    (normalized with the evaluation's log Z) as ``model-best.pt`` beside ``model.pt``.

    The held-out NLL is not monotone in training (issue #16: 6.10, 5.35, 4.86, 5.09, 5.18
    bits/dim at steps 500 to 2500 on patches while the loss kept falling), so the last
    model is not always the one to score.
    """
    value = res.metrics.get(SELECTED_BY)
    if res.log_z is None or value is None or not math.isfinite(value):
        return
    if state.best_nll_bpd is not None and value >= state.best_nll_bpd:
        return
    state.best_nll_bpd, state.best_step = float(value), step
    meta = {"run_name": config["run_name"], "step": step, "mlflow_run_id": state.mlflow_run_id,
            "selected_by": SELECTED_BY, SELECTED_BY: float(value), **config.get("tags", {})}
    save_bundle(Path(config["export_path"]).parent / BEST_FILE, model, cfg, shape.shape, shape.is_image,
                normalization=res.log_z.as_dict(), meta=meta)


def _write_status(run_dir: Path, status: str, message: str) -> None:
    """A small file the driver reads: how the last attempt ended (Ray's result carries no text)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "status.txt").write_text(f"{status}\n{message}\n")


def _finalize(cfg: TrainConfig, config: dict, model: torch.nn.Module, shape: build.DataShape,
              held: tuple[torch.Tensor, list[str]] | None, log: RunLog, state: TrainState) -> None:
    """Rank 0 at the end: normalize an energy, export the bundle, log artifacts, close the run.
    Safe to repeat: a re-run of a finished run lands here directly and redoes only this."""
    import yaml

    from dsm.normalize import normalize

    export = Path(config["export_path"])
    norm = None
    if isinstance(model, Energy):
        norm = normalize(model, held[0], cfg.eval.log_z_t or cfg.noise.t_max, keys=held[1],
                         batch_size=cfg.eval.batch_size).as_dict()
    meta = {"run_name": config["run_name"], "step": state.step, "mlflow_run_id": state.mlflow_run_id,
            "selected_by": "last", **config.get("tags", {})}
    save_bundle(export, model, cfg, shape.shape, shape.is_image, normalization=norm, meta=meta)
    cfg_path = export.parent / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config["cfg"], sort_keys=False))
    best = export.parent / BEST_FILE
    if log.enabled:
        log.artifact(cfg_path)
        log.artifact(export, "model")
        if best.is_file():
            log.artifact(best, "model")
            log.tags({"dsm.best_step": str(state.best_step), "dsm.best_nll_bpd": f"{state.best_nll_bpd:.6g}"})
        log.tags({"dsm.status": "finished", "dsm.export": str(export)})
        log.finish()
    _write_status(export.parent, "finished", str(export))
