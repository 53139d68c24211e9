"""The per-worker training function that Ray Train runs on every rank.

It is thin over the core: the data's :class:`TrainStream`, the core's
:func:`dsm.core.step.train_step` with :class:`~dsm.core.step.Collectives` and
:class:`~dsm.core.step.NonFinitePolicy` (as ``dsm.core.fit`` uses them in one process),
:func:`dsm.train.evaluate.evaluate`, and a checkpoint folder per report. The rules that keep
DDP and ``ray.train.report`` (a barrier) safe, and the code that keeps each:

- every rank runs the same number of steps (``cfg.steps``; a skipped non-finite step counts):
  :func:`_train`;
- every rank joins the loss all-reduce at :func:`is_progress_step` and calls
  ``ray.train.report`` at :func:`is_report_step`; only rank 0 attaches a checkpoint;
- the non-finite decision is all-reduced (``Collectives.all_finite``), so all ranks skip, and
  stop, together;
- evaluation, export and MLflow run on rank 0 only, on the model unwrapped from DDP, and the
  export is written before the last report (:func:`_report`).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice

import torch

from dsm.core.bundle import save_bundle
from dsm.core.energy import Energy, as_input, unwrap
from dsm.core.losses import band_edges, loss_by_band
from dsm.core.precision import precision_scope
from dsm.core.seeding import key_seed
from dsm.core.step import Collectives, NonFinitePolicy, train_step
from dsm.core.units import to_unit_float
from dsm.data.stream import EvalStream, TrainStream, is_eight_bit, make_loader, open_source
from dsm.plumbing.store import Location
from dsm.runtime.console import quiet_ray_train_logs
from dsm.train import build
from dsm.train.config import TrainConfig
from dsm.train.evaluate import consistency_options, denoising_figure, evaluate
from dsm.train.outputs import BEST_FILE, CONFIG_FILE, MODEL_FILE, RunOutputs
from dsm.train.runlog import RunLog
from dsm.train.state import TrainState, load_state, save_state


def train_batches(stream: TrainStream, loader_workers: int, start_step: int,
             device: torch.device | None = None) -> Iterator[dict]:
    """Batches forever from the data position of ``start_step`` (epoch, offset within it).

    One loader for all epochs: its workers start once (set_epoch reaches them through shared
    memory). device: the consumer's; on CUDA the batches come in pinned memory."""
    per_epoch = stream.batches_per_epoch(loader_workers)
    epoch, offset = divmod(start_step, per_epoch)
    loader = make_loader(stream, loader_workers, pin_memory=device is not None and device.type == "cuda")
    while True:
        stream.set_epoch(epoch)
        yield from islice(loader, offset, None)
        offset, epoch = 0, epoch + 1


def _held_out(cfg: TrainConfig, model: torch.nn.Module, device: torch.device) -> tuple[torch.Tensor, list[str]]:
    """The first ``eval.samples`` held-out examples, in manifest order, and their keys."""
    xs, keys = [], []
    for b in EvalStream(cfg.data.eval_path, batch_size=256, rank=0, world_size=1, on_error=cfg.data.on_error):
        xs.append(b["x"])
        keys += b["key"]
        if len(keys) >= cfg.eval.samples:
            break
    x = torch.cat(xs)[:cfg.eval.samples]
    return as_input(model, to_unit_float(x, device)), keys[:cfg.eval.samples]


def _band_means(t: torch.Tensor, values: torch.Tensor, edges: list[float]) -> dict[str, float]:
    """Rank 0's mean training loss per noise band (the same bands as the evaluation)."""
    return {f"train/loss_band{i}": mean for i, (mean, _) in loss_by_band(t, values, edges).items()}


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


@dataclass(frozen=True)
class RunInfo:
    """What the driver sends besides the config (see :func:`train_loop`)."""

    name: str
    tracking_uri: str
    mlflow_run_id: str | None  # the run's MLflow run when the driver opened one
    tags: dict  # tags for the MLflow run and the exported bundles' meta

    @classmethod
    def of(cls, config: dict) -> RunInfo:
        return cls(config["run_name"], config["tracking_uri"], config.get("mlflow_run_id"), config.get("tags", {}))


@dataclass
class Worker:
    """One rank's training run, as :func:`train_loop` sets it up. ``final``: the model that is
    evaluated, normalized and exported (the weight EMA when there is one, on rank 0)."""

    cfg: TrainConfig
    run: RunInfo
    outputs: RunOutputs
    rank: int
    comm: Collectives
    device: torch.device
    shape: build.DataShape
    model: torch.nn.Module
    net: torch.nn.Module  # model, wrapped in DDP when world > 1
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    ema: torch.optim.swa_utils.AveragedModel | None
    loss_fn: object
    sampler: object
    stream: TrainStream
    state: TrainState
    log: RunLog
    held: tuple[torch.Tensor, list[str]] | None = None  # rank 0: held-out examples and keys
    edges: list[float] = field(default_factory=list)  # noise bands of the per-band losses
    eight_bit: bool = False  # NLL in the 8-bit convention (8-bit images)
    per_epoch: int = 1  # batches per epoch of this rank's stream (the data position in checkpoints)

    @property
    def final(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def flush(self) -> None:
        """Write the metric rows kept since the last flush to MLflow (rank 0)."""
        self.log.flush(self.state.pending)
        self.state.pending = []


def train_loop(config: dict) -> dict | None:
    """Ray Train's ``train_loop_per_worker``. ``config``: ``cfg`` (TrainConfig as JSON),
    ``run_name``, ``tracking_uri``, ``mlflow_run_id`` (or None), ``outputs`` (where the run's
    outputs are published: dsm.train.outputs), ``tags``.

    Every rank runs the same steps and reports at the same steps (docs/design.md section 7);
    rank 0 alone evaluates, checkpoints, exports and logs, and returns how the run ended
    (Ray Train hands rank 0's return value to the driver as ``Result.return_value``):
    ``{"status": "finished", "export": path}`` or ``{"status": "non_finite", "message": why}``."""
    w = _start(config)
    if w.state.step >= w.cfg.steps:  # a finished run, run again: redo only the export
        if w.rank == 0:
            _finalize(w)
    elif stopped := _train(w):
        if w.rank == 0:
            _stop(w, stopped)
            return {"status": "non_finite", "message": stopped}
    return {"status": "finished", "export": w.outputs.model.url} if w.rank == 0 else None


def _start(config: dict) -> Worker:
    """Build this rank's model, optimizer, data stream and state; resume from Ray Train's
    checkpoint when there is one; open the MLflow run on rank 0."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(config["cfg"])
    quiet_ray_train_logs()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    device = ray.train.torch.get_device()
    if cfg.scaling.gpu and device.type != "cuda":  # never train on the CPU of a worker that was given a GPU
        from dsm.runtime.resources import WorkerDeviceError, cuda_problem, device_report

        raise WorkerDeviceError(f"scaling.gpu: rank {rank}: {cuda_problem(device_report()) or f'device {device}'}")
    shape = build.data_shape(open_source(cfg.data.path))
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and in every repeat of the run
    model = build.build_model(cfg, shape).to(device)
    opt, sched = build.build_optimizer(cfg, model)
    stream = TrainStream(cfg.data.path, batch_size=cfg.per_worker_batch, mode=cfg.data.mode, seed=cfg.seed,
                         rank=rank, world_size=world, loader_workers=cfg.data.loader_workers,
                         shuffle_buffer=cfg.data.shuffle_buffer, flips=cfg.data.flips, on_error=cfg.data.on_error)
    run = RunInfo.of(config)
    outputs = RunOutputs(run.name, Location.of(config["outputs"]))
    w = Worker(cfg, run, outputs, rank, Collectives(world, device), device, shape, model, model, opt, sched,
               ema=build.build_ema(cfg, model) if rank == 0 else None,  # only rank 0 evaluates and exports
               loss_fn=build.build_loss(cfg), sampler=build.build_sampler(cfg), stream=stream,
               state=TrainState(nonfinite=NonFinitePolicy(cfg.optim.max_bad_steps),
                                mlflow_run_id=run.mlflow_run_id),
               log=RunLog(None, ""))
    _resume(w, ray.train.get_checkpoint())
    if world > 1:
        w.net = ray.train.torch.prepare_model(model, move_to_device=False)
    w.edges = band_edges(cfg.noise.t_min, cfg.noise.t_max)
    w.eight_bit = is_eight_bit(open_source(cfg.data.eval_path))
    w.per_epoch = stream.batches_per_epoch(cfg.data.loader_workers)
    if rank == 0:
        if w.state.step == 0:  # a fresh run: nothing of an earlier run of this name (model-best.pt) is its own
            w.outputs.discard_staging()
        _open_log(w)
        if cfg.eval.enabled or isinstance(model, Energy):
            w.held = _held_out(cfg, model, device)
    return w


def _resume(w: Worker, ckpt) -> None:
    """Load Ray Train's latest checkpoint (weights, optimizer, schedule, sampler, EMA, step)."""
    if ckpt is None:
        return
    with ckpt.as_directory() as folder:
        # Read on the CPU: load_state_dict then puts each tensor where a fresh run has it (Adam's
        # step counters stay on the CPU, the RNG and sampler state too).
        w.state, _ = load_state(folder, model=w.model, optimizer=w.opt, scheduler=w.sched,
                                sampler=w.sampler, ema=w.ema, nonfinite=w.state.nonfinite)
    if w.rank == 0:
        _say(f"dsm train: resumed {w.run.name} at step {w.state.step}/{w.cfg.steps}")


def _open_log(w: Worker) -> None:
    """Rank 0's MLflow handle: skip rows already logged, write those a crash kept back."""
    w.log = RunLog(w.state.mlflow_run_id, w.run.tracking_uri)
    if not w.log.enabled:
        return
    w.log.resume()
    w.flush()  # rows a crash may have kept from MLflow
    w.log.tags({"dsm.device": torch.cuda.get_device_name(w.device) if w.device.type == "cuda" else
                f"cpu x {w.comm.world} worker(s)", "dsm.precision": w.cfg.precision})


def is_progress_step(cfg: TrainConfig, step: int) -> bool:
    """Steps after which every rank joins the loss all-reduce and rank 0 prints a line."""
    return step % cfg.log_every == 0 or step == cfg.steps


def is_report_step(cfg: TrainConfig, step: int) -> bool:
    """Steps after which every rank calls ``ray.train.report`` (a barrier) and rank 0 attaches a
    checkpoint: the same steps on every rank, the last step always one."""
    return step % cfg.checkpoint.every == 0 or step == cfg.steps


def _train(w: Worker) -> str | None:
    """Steps from the state's step to ``cfg.steps``, with progress lines and reports; returns
    why training stopped early (non-finite steps), else None."""
    cfg = w.cfg
    batches = train_batches(w.stream, cfg.data.loader_workers, w.state.step, w.device)
    window, clock = Window(), (time.time(), w.state.step)
    while w.state.step < cfg.steps:
        stopped = _step(w, next(batches), window)
        step = w.state.step
        if is_progress_step(cfg, step) or stopped:
            _progress(w, window, clock)
            window = Window()
        if stopped:
            return stopped
        if is_report_step(cfg, step):
            _report(w, step)
    return None


def _step(w: Worker, batch: dict, window: Window) -> str | None:
    """One optimization step on this rank's batch. A non-finite input batch is zeroed and its
    update vetoed on every rank (each rank must still take part in the step's collectives).
    Returns the non-finite policy's reason to stop, or None."""
    t0 = time.perf_counter()
    x = as_input(w.model, to_unit_float(batch["x"], w.device))
    # 8-bit pixels are finite by construction: no device-to-host sync to check them
    input_ok = batch["x"].dtype == torch.uint8 or bool(torch.isfinite(x).all())
    if not input_ok:
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        _say(f"dsm train: rank {w.rank}: non-finite values in the input batch at step {w.state.step + 1} "
             f"(keys {batch['key'][:3]}...)", err=True)
    gen = torch.Generator(device=w.device).manual_seed(key_seed(w.state.step, f"train/{w.cfg.seed}/{w.rank}"))
    with precision_scope(w.cfg.precision, w.device):
        res = train_step(w.net, w.opt, w.loss_fn, x, w.sampler, generator=gen, scheduler=w.sched,
                         max_grad_norm=w.cfg.optim.max_grad_norm, ema=w.ema,
                         all_finite=lambda ok: w.comm.all_finite(ok and input_ok), all_reduce_sum=w.comm.sum_tensor)
    w.state.step += 1
    count = w.state.nonfinite
    stopped = count.after_step(res.finite, w.state.step)
    if not res.finite and w.rank == 0:
        _say(f"dsm train: non-finite loss or gradient at step {w.state.step} on some rank; update skipped "
             f"({count.bad_run} in a row, {count.skipped} in total)", err=True)
        w.state.pending.append((w.state.step, {"train/nonfinite_skipped": float(count.skipped)}))
    window.add(res, images=x.shape[0] * w.comm.world, busy=time.perf_counter() - t0)
    return stopped


@dataclass
class Window:
    """Sums over the steps since the last progress line (this rank's finite steps)."""

    loss: float = 0.0
    n: int = 0
    grad: float = 0.0
    images: int = 0  # all ranks' images
    busy: float = 0.0  # seconds in batch fetch + step
    steps: int = 0
    t: list = field(default_factory=list)
    terms: list = field(default_factory=list)
    heat: list = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def add(self, res, images: int, busy: float) -> None:
        if res.finite:
            self.loss += res.loss
            self.n += 1
            self.grad += res.grad_norm
            self.t.append(res.t.cpu())
            self.terms.append(res.terms.total.cpu())
            if res.terms.heat is not None:
                self.heat.append(res.terms.heat.cpu())
        self.images += images
        self.busy += busy
        self.steps += 1


def _progress(w: Worker, window: Window, clock: tuple[float, int]) -> None:
    """All ranks: the window's mean loss over ranks; rank 0: a progress line and a metric row."""
    loss_sum, n = w.comm.sum(window.loss, float(window.n))
    if w.rank != 0:
        return
    step, now = w.state.step, time.time()
    ips = window.images / max(now - window.started, 1e-9)
    rate = (step - clock[1]) / max(now - clock[0], 1e-9)
    row = {"train/loss": loss_sum / max(n, 1), "train/lr": w.opt.param_groups[0]["lr"],
           "train/grad_norm": window.grad / max(window.n, 1), "train/images_per_s": ips,
           # batch fetch + step, rank 0: what benchmarks/ray_overhead.py compares
           "train/step_s": window.busy / max(window.steps, 1)}
    if window.t:
        row.update(_band_means(torch.cat(window.t), torch.cat(window.terms), w.edges))
    if window.heat:  # rank 0's mean of the (unbiased) squared heat residual
        row["train/heat_residual_sq"] = float(torch.cat(window.heat).mean())
    if n > 0:
        w.state.pending.append((step, row))
    _say(f"step {step}/{w.cfg.steps}  loss {row['train/loss']:.4g}  {ips:.0f} img/s  "
         f"eta {_fmt_eta((w.cfg.steps - step) / max(rate, 1e-9))}")


def _report(w: Worker, step: int) -> None:
    """All ranks call ``ray.train.report`` with the same metrics keys; rank 0 first evaluates
    and writes the checkpoint, and at the last step exports, before the report: a scheduler
    that stops the trial on its final result (ASHA at max_t) would otherwise cut the export."""
    import ray.train

    metrics: dict = {"step": step, "skipped": w.state.nonfinite.skipped}
    with tempfile.TemporaryDirectory(prefix="dsm-ckpt-") as tmp:
        checkpoint = None
        if w.rank == 0:
            if w.cfg.eval.enabled and w.held is not None:
                ev = _evaluate(w, step)
                w.state.pending.append((step, ev))
                metrics.update(ev)
            save_state(tmp, model=unwrap(w.net), optimizer=w.opt, scheduler=w.sched, state=w.state,
                       config=w.cfg.model_dump(mode="json"), batches_per_epoch=w.per_epoch, world_size=w.comm.world,
                       sampler=w.sampler, ema=w.ema)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
            if step == w.cfg.steps:
                w.flush()
                _finalize(w)
        ray.train.report(metrics, checkpoint=checkpoint)
    if w.rank == 0:
        w.flush()


def _evaluate(w: Worker, step: int) -> dict[str, float]:
    """Rank 0: the held-out evaluation of the final model; the denoising figure to MLflow; the
    best model so far kept as model-best.pt."""
    cfg, held = w.cfg, w.held
    with precision_scope("fp32", w.device):  # held-out numbers are comparable whatever the training precision
        res = evaluate(w.final, held[0], held[1], loss_fn=w.loss_fn, t_min=cfg.noise.t_min, t_max=cfg.noise.t_max,
                       psnrs=cfg.eval.psnrs if cfg.eval.enabled else [], log_z_t=cfg.eval.log_z_t,
                       eight_bit=w.eight_bit, batch_size=cfg.eval.batch_size,
                       grid_examples=8 if cfg.eval.grid and cfg.model.arch == "unet" else 0,
                       consistency=consistency_options(cfg.eval))
    if res.denoised:
        path = w.outputs.staging_dir / "figures" / f"denoised_{step:08d}.png"
        fig = denoising_figure(held[0][:8].cpu(), res.denoised, str(path))
        w.log.artifact(fig, "figures")
    _keep_best(w, res, step)
    return res.metrics


def _stop(w: Worker, reason: str) -> None:
    """Rank 0 after the non-finite policy stopped the run: close the MLflow run as FAILED and
    tell the driver why."""
    w.flush()
    w.log.tags({"dsm.status": "non_finite", "dsm.stop_reason": reason})
    w.log.finish("FAILED")
    w.outputs.discard_staging()
    _say(f"dsm train: {reason}", err=True)


SELECTED_BY = "eval/nll_bpd"  # model selection: the normalized held-out NLL, lower is better


def _keep_best(w: Worker, res, step: int) -> None:
    """Rank 0 after an evaluation: when the held-out NLL is the lowest so far, export the model
    (normalized with the evaluation's log Z) as ``model-best.pt`` beside ``model.pt``.

    The held-out NLL is not monotone in training (a patches run went 6.10, 5.35, 4.86, 5.09,
    5.18 bits/dim at steps 500 to 2500 while the loss kept falling), so the last model is not
    always the one to score.
    """
    state, value = w.state, res.metrics.get(SELECTED_BY)
    if res.log_z is None or value is None or not math.isfinite(value):
        return
    if state.best_nll_bpd is not None and value >= state.best_nll_bpd:
        return
    state.best_nll_bpd, state.best_step = float(value), step
    meta = {"run_name": w.run.name, "step": step, "mlflow_run_id": state.mlflow_run_id,
            "selected_by": SELECTED_BY, SELECTED_BY: float(value), **w.run.tags}
    best = save_bundle(w.outputs.staging_dir / BEST_FILE, w.final, w.cfg, w.shape.shape, w.shape.is_image,
                       normalization=res.log_z.as_dict(), meta=meta, eight_bit=w.eight_bit)
    w.outputs.publish(best)


def _finalize(w: Worker) -> None:
    """Rank 0 at the end: normalize an energy, export the bundle, log artifacts, close the run.
    Safe to repeat: a re-run of a finished run lands here directly and redoes only this."""
    import yaml

    from dsm.core.normalize import normalize

    cfg, outputs, model, shape, held, log, state = w.cfg, w.outputs, w.final, w.shape, w.held, w.log, w.state
    export = outputs.staging_dir / MODEL_FILE
    norm = None
    if isinstance(model, Energy):
        with precision_scope("fp32", w.device):  # the exported log Z is fp32 whatever the training precision
            norm = normalize(model, held[0], cfg.eval.log_z_t or cfg.noise.t_max, keys=held[1],
                             batch_size=cfg.eval.batch_size).as_dict()
    meta = {"run_name": w.run.name, "step": state.step, "mlflow_run_id": state.mlflow_run_id,
            "selected_by": "last", **w.run.tags}
    save_bundle(export, model, cfg, shape.shape, shape.is_image, normalization=norm, meta=meta, eight_bit=w.eight_bit)
    cfg_path = export.parent / CONFIG_FILE
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    outputs.publish(cfg_path)
    outputs.publish(export)  # last: a published model.pt means the run finished
    best = outputs.staged(BEST_FILE)
    if log.enabled:
        log.artifact(cfg_path)
        log.artifact(export, "model")
        if best.is_file():
            log.artifact(best, "model")
            log.tags({"dsm.best_step": str(state.best_step), "dsm.best_nll_bpd": f"{state.best_nll_bpd:.6g}"})
        log.tags({"dsm.status": "finished", "dsm.export": str(outputs.model)})
        log.finish()
    w.outputs.discard_staging()
