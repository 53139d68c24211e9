"""The GPU check of dsm: correctness, precision, throughput, DDP, resume and scoring on one device.

Eight sections, each with stated tolerances; every section runs even when an earlier one
fails, and the exit status is 1 when any assertion failed (the failures are printed):

1. dsm's ops (dsm.core.nets.conv, FastGELU, HomogeneousNorm) against the stock torch twins
   (dsm.core.nets.stock) on the device: U, dU/dy and dU/dt on the same weights, float64 and fp32.
2. CPU against the device in float64 on the same weights: U, log Z and d_eff.
3. Precision on a model trained for ``--warm-steps`` fp32 steps (at initialisation the output
   layer is zero and U = 0): fp32 (TF32 off), torch's defaults left alone, TF32, bf16 autocast;
   differences from fp32 in the loss, log Z and log p (bits/dim).
4. Energy train-step images/s and peak memory per batch, cuDNN benchmark on and off, dsm's
   ops against stock ops, the energy/score step ratio, and images/s per precision against
   the goal of 1500 images/s per H100 (the paper's code: 307 in fp32).
5. DDP with world size 1 (NCCL on CUDA, gloo on CPU): one train_step, the same update as
   without DDP.
6. Two gloo ranks sharing the device: averaged gradients equal one process's on the whole batch.
7. Adam's ``step`` after a save/load resume (dsm.train.state) stays on the CPU.
8. One scoring batch (dsm.scoring.columns.score_batch): the share of CPU keyed-noise generation.

It needs torch and dsm's core only (pydantic too: dsm.core.nets.unet imports it), no Ray or MLflow.
Full size (``paper`` preset, 3x64x64) is sized for at most 8 minutes on one H100 (section 4's
batch grid stops at ``--budget-s``); ``--quick`` (``tiny`` at 16x16) is the CPU self-check
that the test suite runs.

    python3 benchmarks/gpu_check.py                       # on a GPU machine: gpu-check/gpu_check.{json,md}
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu-check
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib.util
import json
import math
import socket
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

if importlib.util.find_spec("dsm") is None:  # a bare GPU machine runs the checkout, not an installed dsm
    sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from _common import machine  # noqa: E402

from dsm.core import losses, models, noise  # noqa: E402
from dsm.core.deff import d_eff  # noqa: E402
from dsm.core.nets.stock import with_stock_ops  # noqa: E402
from dsm.core.normalize import estimate_log_z  # noqa: E402
from dsm.core.precision import precision_scope  # noqa: E402
from dsm.core.seeding import keyed_normal  # noqa: E402
from dsm.core.step import Collectives, train_step  # noqa: E402

GOAL_IMAGES_PER_S = 1500.0  # energy training, paper preset at 64x64, per H100
PAPER_FP32_IMAGES_PER_S = 307.0  # the paper's code in fp32 on one H100
LR = 5e-4
T_MIN, T_MAX = 1e-9, 1e3  # the training range of noise variances (the paper's)
LOG_Z_T = 1e3  # noise variance of the log Z estimate (the paper's)
ROWS = ("fp32", "default", "tf32", "bf16")  # "default": torch's flags left as they are, no scope
HEAVY = ("ray", "mlflow", "webdataset")  # orchestration packages the core must not import

# Tolerances, each the bound asserted on a relative (or stated) difference.
TOL_F64 = 1e-9  # float64 against float64: only the order of sums differs
TOL_F32_OPS = 1e-4  # fp32 (TF32 off), dsm's ops against stock ops: GELU and normalization round differently
TOL_BITS = 0.01  # |log p - log p fp32| per image, bits/dim (bf16 and TF32, on CUDA)
TOL_DDP = 1e-9  # float64 gradients and updates, DDP against one process
TOL_NOISE_SHARE = 20.0  # percent of a scoring batch spent in keyed noise (asserted on CUDA)


@dataclass(frozen=True)
class Sizes:
    """Problem sizes. batches: per-device batches of section 4 (images)."""

    preset: str
    size: int
    warm_batch: int
    eval_images: int
    batches: tuple[int, ...]
    precision_batch: int
    warmup: int
    repeats: int
    score_images: int


FULL = Sizes("paper", 64, 64, 256, (16, 32, 64, 128), 128, 2, 3, 64)
QUICK = Sizes("tiny", 16, 8, 16, (2, 4), 4, 1, 1, 8)


@dataclass
class Section:
    """One section's results: asserted checks, reported values and markdown tables."""

    key: str
    title: str
    checks: list[dict] = field(default_factory=list)
    values: dict = field(default_factory=dict)
    tables: list[tuple[list[str], list[list]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def check(self, name: str, value: float, tol: float, unit: str = "", asserted: bool = True) -> bool:
        """Record ``value <= tol`` (a NaN fails); ``asserted=False`` only reports it."""
        value = float(value)
        ok = bool(value <= tol) if asserted else None
        self.checks.append({"name": name, "value": value, "tol": tol, "unit": unit, "ok": ok})
        return ok is not False

    def failures(self) -> list[str]:
        out = [f"{self.key}: {c['name']} = {c['value']:.3g} {c['unit']} > {c['tol']:g}".rstrip()
               for c in self.checks if c["ok"] is False]
        return out + ([f"{self.key}: raised {self.error}"] if self.error else [])


@dataclass
class Ctx:
    """What the sections share: the device, sizes, data and the fp32-trained energy."""

    args: argparse.Namespace
    device: torch.device
    sizes: Sizes
    train: torch.Tensor  # (N, 3, size, size) crops in [0, 1], on the device
    held: torch.Tensor  # held-out crops, same layout
    model: torch.nn.Module  # EnergyModel trained in fp32, on the device
    data_source: str = ""

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


# ------------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    """Wait for queued device work, so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def scope(row: str, device: torch.device):
    """The precision context of a row: none for ``default`` (torch's flags untouched)."""
    return contextlib.nullcontext() if row == "default" else precision_scope(row, device)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (float64), the relative difference of two tensors of one shape."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def energy_model(preset: str, size: int) -> torch.nn.Module:
    """The image energy on 3 x size x size, trained over t in [T_MIN, T_MAX]."""
    return models.unet_energy(3, size, preset, t_min=T_MIN, t_max=T_MAX)


def dead_leaves(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) dead-leaves images in [0, 1]: occluding discs of power-law radii, the
    classic stand-in for natural images (used only when the bundled photos cannot be read)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = torch.zeros(n, 3, size, size)
    for i in range(n):
        img, free = torch.zeros(3, size, size), torch.ones(size, size, dtype=torch.bool)
        for _ in range(400):
            r = size * 0.02 / (1 - 0.98 * float(torch.rand((), generator=g)))  # heavy-tailed radii
            cy, cx = (torch.rand(2, generator=g) * size).tolist()
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & free
            img[:, disc] = torch.rand(3, 1, generator=g)
            free &= ~disc
        out[i] = img
    return out


def natural_images(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """(n, 3, size, size) crops of the bundled photos in [0, 1], and where they came from.

    The photos load through scikit-image, scikit-learn and matplotlib; where they cannot be
    read the check still runs, on dead-leaves images (the report names the source)."""
    try:
        from dsm.data.images import box_downsample
        from dsm.data.sources import PrepareConfig, load_patches

        patches = load_patches("train", PrepareConfig(patch=2 * size, count=n, seed=seed)).images
        return torch.from_numpy(box_downsample(patches, size)).permute(0, 3, 1, 2).float() / 255, "bundled photos"
    except Exception as e:  # a missing package, or a photo file that this version does not ship
        return dead_leaves(n, size, seed), f"dead leaves (photos unreadable: {type(e).__name__}: {e})"


def timed_rate(step: Callable[[], object], batch: int, device: torch.device, warmup: int,
               repeats: int) -> tuple[float, float | None]:
    """(images/s, peak device memory in GiB or None on CPU) of ``step`` on ``batch`` images."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):  # cuDNN autotuning, the caching allocator, oneDNN primitives
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    sync(device)
    rate = batch * repeats / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return rate, peak


def stepper(model: torch.nn.Module, loss_fn, x: torch.Tensor) -> Callable[[], object]:
    """One Adam train_step on ``x`` per call (the noise drawn inside, as in training)."""
    opt = torch.optim.Adam(model.parameters(), LR)
    sampler = noise.make_t_sampler("log_uniform", T_MIN, T_MAX)
    return lambda: train_step(model, opt, loss_fn, x, sampler)


def noisy_batch(x: torch.Tensor, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, t, z) with t log-spaced over [1e-3, 1e2] and z seeded on the CPU: (B, ...), (B,), (B, ...)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.logspace(-3, 2, x.shape[0], dtype=torch.float64).to(x)
    z = torch.randn(x.shape, generator=g, dtype=torch.float64).to(x)
    return x + t.sqrt()[:, None, None, None] * z, t, z


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the rendezvous of a process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------- setup
def warm_up(ctx: Ctx, sec: Section) -> None:
    """Train ``ctx.model`` in fp32 for ``--warm-steps`` Adam steps on random training crops."""
    g = torch.Generator(device=ctx.device).manual_seed(0)
    sampler = noise.make_t_sampler("log_uniform", T_MIN, T_MAX)
    opt = torch.optim.Adam(ctx.model.parameters(), LR)
    loss_fn, first, last = losses.DualScoreMatching(), None, None
    with precision_scope("fp32", ctx.device):
        for _ in range(ctx.args.warm_steps):
            idx = torch.randint(0, ctx.train.shape[0], (ctx.sizes.warm_batch,), generator=g, device=ctx.device)
            last = train_step(ctx.model, opt, loss_fn, ctx.train[idx], sampler, generator=g).loss
            first = last if first is None else first
    ctx.model.eval()
    sec.values.update({"first loss": first, "last loss": last})


# ------------------------------------------------------------------------------- 1. ops
def section_ops(ctx: Ctx, sec: Section) -> None:
    """dsm's ops against the stock twins on the device: U, dU/dy, dU/dt on the same weights."""
    x = ctx.held[:4]
    rows = []
    for dtype, row, tol in ((torch.float64, "default", TOL_F64), (torch.float32, "fp32", TOL_F32_OPS)):
        fast = copy.deepcopy(ctx.model).to(dtype)
        stock = with_stock_ops(fast)
        y, t, _ = noisy_batch(x.to(dtype))
        with scope(row, ctx.device):
            a, b = fast.scores(y, t), stock.scores(y, t)
        name = str(dtype).replace("torch.", "")
        for q in ("energy", "grad_y", "grad_t"):
            err = rel(getattr(a, q), getattr(b, q))
            sec.check(f"{name} {q}: dsm vs stock (rel)", err, tol)
            rows.append([name, q, err, tol])
    sec.tables.append((["dtype", "quantity", "max rel diff", "tolerance"], rows))


# ------------------------------------------------------------------------------- 2. CPU vs device
def section_cpu_vs_device(ctx: Ctx, sec: Section) -> None:
    """float64 on the CPU against float64 on the device, same weights: U, log Z, d_eff."""
    cpu = torch.device("cpu")
    nets = {d: copy.deepcopy(ctx.model).double().to(d).eval() for d in (cpu, ctx.device)}
    x = {d: ctx.held[:4].double().to(d) for d in nets}
    keys = [f"gpu-check/{i}" for i in range(4)]
    out = {}
    for d, m in nets.items():
        t0 = torch.zeros(4, dtype=torch.float64, device=d)
        with torch.no_grad():
            u = m.energy(x[d], t0)
        lz = estimate_log_z(m, x[d], LOG_Z_T, keys=keys)
        de = d_eff(m, x[d][:2], 0.1, n_noise=2, keys=keys[:2])
        out[d] = {"U(x, 0)": u, "log Z": torch.tensor(lz.value), "d_eff denoising": de.denoising,
                  "d_eff time": de.time}
    rows = []
    for q in out[cpu]:
        err = rel(out[ctx.device][q], out[cpu][q])
        sec.check(f"{q}: device vs CPU, float64 (rel)", err, TOL_F64)
        rows.append([q, float(out[cpu][q].double().abs().max()), err, TOL_F64])
    sec.tables.append((["quantity", "max abs (CPU)", "max rel diff", "tolerance"], rows))


# ------------------------------------------------------------------------------- 3. precision
def precision_row(ctx: Ctx, row: str, fixed: torch.Tensor) -> dict:
    """Loss on ``fixed`` (same t and z for every row), log Z and log p (bits/dim) of the
    held-out crops, all computed under the row's precision on the trained weights."""
    m, d = ctx.model, ctx.model.dim
    gen = torch.Generator(device=ctx.device).manual_seed(1234)
    sampler = noise.make_t_sampler("log_uniform", T_MIN, T_MAX)
    t = sampler(fixed.shape[0], generator=gen, device=ctx.device)
    z = torch.randn(fixed.shape, generator=gen, device=ctx.device)
    with scope(row, ctx.device):
        with torch.enable_grad():  # the loss differentiates U in y and t
            loss = float(losses.DualScoreMatching()(m, fixed, t, z).total.mean().detach())
        lz = estimate_log_z(m, ctx.held, LOG_Z_T, batch_size=64).value
        t0 = torch.zeros(ctx.held.shape[0], device=ctx.device)
        with torch.no_grad():
            u = torch.cat([m.energy(ctx.held[i:i + 64], t0[i:i + 64]).double()
                           for i in range(0, ctx.held.shape[0], 64)])
    logp_bits = (-u.cpu() - lz) / (d * math.log(2))
    return {"loss": loss, "log_z": lz, "logp_bits": logp_bits}


def section_precision(ctx: Ctx, sec: Section) -> None:
    """Differences from the fp32 row (TF32 off) on the trained weights."""
    fixed = ctx.train[:ctx.sizes.precision_batch]
    res = {row: precision_row(ctx, row, fixed) for row in ROWS}
    ref = res["fp32"]
    sec.values["fp32 mean log p (bits/dim)"] = float(ref["logp_bits"].mean())
    sec.values["fp32 loss"] = ref["loss"]
    sec.values["fp32 log Z (nats)"] = ref["log_z"]
    rows = []
    for row in ROWS:
        r = res[row]
        dp = r["logp_bits"] - ref["logp_bits"]
        vals = {"d_loss": r["loss"] - ref["loss"], "d_loss_rel": (r["loss"] - ref["loss"]) / abs(ref["loss"]),
                "d_log_z": r["log_z"] - ref["log_z"], "mean_d_logp_bits": float(dp.mean()),
                "max_abs_d_logp_bits": float(dp.abs().max())}
        sec.values[row] = vals
        if row != "fp32":  # asserted where the precision matters: TF32 and bf16 on a GPU
            sec.check(f"{row}: max |d log p| (bits/dim)", vals["max_abs_d_logp_bits"], TOL_BITS, "bits/dim",
                      asserted=ctx.cuda and row in ("tf32", "bf16"))
        rows.append([row, vals["d_loss"], vals["d_loss_rel"], vals["d_log_z"], vals["mean_d_logp_bits"],
                     vals["max_abs_d_logp_bits"]])
    sec.tables.append((["precision", "d loss", "d loss (rel)", "d log Z (nats)", "mean d log p (bits/dim)",
                        "max abs d log p (bits/dim)"], rows))
    sec.notes.append(f"{ctx.held.shape[0]} held-out crops; fp32 mean log p "
                     f"{sec.values['fp32 mean log p (bits/dim)']:.3f} bits/dim; target max |d log p| < "
                     f"{TOL_BITS} bits/dim for TF32 and bf16 ({'asserted' if ctx.cuda else 'reported only on CPU'})")


# ------------------------------------------------------------------------------- 4. throughput
@contextlib.contextmanager
def cudnn_benchmark(on: bool):
    """torch.backends.cudnn.benchmark set to ``on``, restored on exit."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def safe_rate(ctx: Ctx, sec: Section, label: str, net: torch.nn.Module, loss_fn, x: torch.Tensor):
    """``timed_rate`` of a train_step; an error (out of memory, say) is a failed check, not the
    end of the section: returns (None, None) then."""
    try:
        return timed_rate(stepper(net, loss_fn, x), x.shape[0], ctx.device, ctx.sizes.warmup, ctx.sizes.repeats)
    except RuntimeError as e:  # torch.OutOfMemoryError among them
        sec.check(f"{label} ran (0 = yes)", 1.0, 0.0)
        sec.notes.append(f"{label}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
        if ctx.cuda:
            torch.cuda.empty_cache()
        return None, None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None else None


def throughput_grid(ctx: Ctx, sec: Section, nets: dict, deadline: float) -> None:
    """images/s and peak memory per batch x cuDNN benchmark x network, in fp32 (TF32 off)."""
    rows, skipped = [], []
    for bench in (False, True):
        for batch in ctx.sizes.batches:
            x, on = ctx.train[:batch], "on" if bench else "off"
            if time.perf_counter() > deadline:
                skipped.append(f"batch {batch} benchmark {on}")
                continue
            with cudnn_benchmark(bench), precision_scope("fp32", ctx.device):
                (e, e_mem), (s, s_mem), (sc, sc_mem) = (
                    safe_rate(ctx, sec, f"{name}, batch {batch}, benchmark {on}", net, loss_fn, x)
                    for name, (net, loss_fn) in nets.items())
            sec.values[f"b{batch} benchmark={on}"] = {
                "energy_images_per_s": e, "energy_peak_gib": e_mem, "stock_energy_images_per_s": s,
                "stock_energy_peak_gib": s_mem, "score_images_per_s": sc, "score_peak_gib": sc_mem,
                "ops_speedup": ratio(e, s), "energy_score_ratio": ratio(sc, e)}
            rows.append([batch, on, e, e_mem, s, s_mem, ratio(e, s), sc, ratio(sc, e)])
    sec.tables.append((["batch", "cuDNN benchmark", "energy img/s", "energy peak GiB", "stock energy img/s",
                        "stock peak GiB", "dsm/stock ops", "score img/s", "energy/score step"], rows))
    if skipped:
        sec.values["skipped (time budget)"] = skipped
        sec.notes.append(f"past the --budget-s time budget, not measured: {', '.join(skipped)}")


def throughput_precisions(ctx: Ctx, sec: Section, nets: dict) -> None:
    """Energy and score images/s per precision at ``precision_batch``, cuDNN benchmark on."""
    x = ctx.train[:ctx.sizes.precision_batch]
    rows, rates = [], {}
    for row in ROWS:
        with cudnn_benchmark(True), scope(row, ctx.device):
            e, e_mem = safe_rate(ctx, sec, f"energy, {row}", *nets["energy"], x)
            s, _ = safe_rate(ctx, sec, f"score, {row}", *nets["score"], x)
        rates[row] = e
        sec.values[f"precision {row}"] = {
            "energy_images_per_s": e, "energy_peak_gib": e_mem, "score_images_per_s": s,
            "energy_score_ratio": ratio(s, e), "x_goal": ratio(e, GOAL_IMAGES_PER_S),
            "x_paper_fp32": ratio(e, PAPER_FP32_IMAGES_PER_S)}
        rows.append([row, e, e_mem, s, ratio(s, e), ratio(e, GOAL_IMAGES_PER_S), ratio(e, PAPER_FP32_IMAGES_PER_S)])
    sec.tables.append((["precision", "energy img/s", "energy peak GiB", "score img/s", "energy/score step",
                        "x goal 1500", "x paper fp32 307"], rows))
    measured = {r: e for r, e in rates.items() if e is not None}
    reached = [r for r, e in measured.items() if e >= GOAL_IMAGES_PER_S]
    best = max(measured, key=measured.get) if measured else None
    where = f"{ctx.sizes.preset} preset at {ctx.sizes.size}x{ctx.sizes.size}, batch {x.shape[0]}, {ctx.device.type}"
    verdict = (f"reached by {', '.join(reached)}" if reached else
               f"reached by no precision (best: {best}, {measured[best]:.0f} images/s)" if best else "not measured")
    sec.notes.append(f"goal {GOAL_IMAGES_PER_S:.0f} energy images/s per H100 ({where}): {verdict}")


def section_throughput(ctx: Ctx, sec: Section) -> None:
    """Energy train-step throughput: fresh networks (the speed does not depend on the weights)."""
    torch.manual_seed(0)
    energy = energy_model(ctx.sizes.preset, ctx.sizes.size).to(ctx.device)
    score = models.unet_score_model(3, ctx.sizes.size, ctx.sizes.preset, t_min=T_MIN,
                                    t_max=T_MAX).to(ctx.device)
    nets = {"energy": (energy, losses.DualScoreMatching()),
            "stock energy": (with_stock_ops(energy), losses.DualScoreMatching()),
            "score": (score, losses.Denoising())}
    deadline = time.perf_counter() + ctx.args.budget_s
    throughput_grid(ctx, sec, nets, deadline)
    throughput_precisions(ctx, sec, nets)


# ------------------------------------------------------------------------------- 5. DDP, one rank
def one_step(net: torch.nn.Module, device: torch.device, x: torch.Tensor,
             coll: Collectives | None = None) -> tuple[bool, dict, dict]:
    """One Adam train_step of dual score matching (the double backward inside) with a seeded
    device generator; returns (finite, gradients, parameters after the update) by name."""
    inner = getattr(net, "module", net)
    opt = torch.optim.Adam(inner.parameters(), LR)
    gen = torch.Generator(device=device).manual_seed(7)
    sampler = noise.make_t_sampler("log_uniform", 1e-3, 1e2)
    res = train_step(net, opt, losses.DualScoreMatching(), x, sampler, generator=gen,
                     all_finite=coll.all_finite if coll else None, all_reduce_sum=coll.sum_tensor if coll else None)
    grads = {n: p.grad.detach().clone() for n, p in inner.named_parameters()}
    return res.finite, grads, {n: p.detach().clone() for n, p in inner.named_parameters()}


def section_ddp_one_rank(ctx: Ctx, sec: Section) -> None:
    """DistributedDataParallel, world size 1 (NCCL on CUDA, gloo on CPU), against no DDP."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    backend = "nccl" if ctx.cuda else "gloo"
    sec.values["backend"] = backend
    x = ctx.train[:4].double()
    plain, wrapped = copy.deepcopy(ctx.model).double(), copy.deepcopy(ctx.model).double()
    if ctx.cuda:
        torch.cuda.set_device(ctx.device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=120))
    try:
        net = DistributedDataParallel(wrapped, device_ids=[ctx.device.index or 0] if ctx.cuda else None)
        coll = Collectives(world=dist.get_world_size(), device=ctx.device)
        ok_ddp, g_ddp, p_ddp = one_step(net, ctx.device, x, coll)
        v = torch.ones(3, device=ctx.device)
        dist.all_reduce(v)  # Collectives skips the all-reduce at world size 1: one here, on the backend
        sync(ctx.device)
    finally:
        dist.destroy_process_group()
    ok, g, p = one_step(plain, ctx.device, x)
    sec.check("train_step under DDP finite (0 = yes)", 0.0 if ok_ddp and ok else 1.0, 0.0)
    sec.check("all_reduce of ones, |sum - 1|", float((v - 1).abs().max()), 0.0)
    g_err = max(rel(g_ddp[n], g[n]) for n in g)
    p_err = max(float((p_ddp[n] - p[n]).abs().max()) for n in p) / LR
    sec.check("gradients, DDP vs none (max rel)", g_err, TOL_DDP)
    sec.check("update, DDP vs none (max abs / lr)", p_err, TOL_DDP)
    sec.tables.append((["backend", "world", "grad max rel diff", "update max abs diff / lr", "tolerance"],
                       [[backend, 1, g_err, p_err, TOL_DDP]]))


# ------------------------------------------------------------------------------- 6. two gloo ranks
def spawn_worker(rank: int, world: int, port: int, blob_path: str, out_path: str) -> None:
    """One of two gloo ranks on the same device: DDP gradients of its half of the batch."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    blob = torch.load(blob_path)
    device = torch.device(blob["device"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)  # two processes share the cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    try:
        model = energy_model(blob["preset"], blob["size"]).double()
        model.load_state_dict(blob["state"])
        net = DistributedDataParallel(model.to(device), device_ids=[device.index or 0] if device.type == "cuda"
                                      else None)
        half = blob["x"].shape[0] // world
        s = slice(rank * half, (rank + 1) * half)
        x, t, z = (blob[k][s].to(device) for k in ("x", "t", "z"))
        losses.DualScoreMatching()(net, x, t, z).total.mean().backward()
        if rank == 0:
            torch.save({n: p.grad.cpu() for n, p in model.named_parameters()}, out_path)
        dist.barrier()  # neither rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


def run_spawned(nprocs: int, args: tuple, timeout_s: float) -> None:
    """torch.multiprocessing spawn of ``spawn_worker``, killed past ``timeout_s`` seconds."""
    import torch.multiprocessing as mp

    pc = mp.start_processes(spawn_worker, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.perf_counter() + timeout_s
    while not pc.join(timeout=2):
        if time.perf_counter() > deadline:
            for p in pc.processes:
                p.kill()
            raise TimeoutError(f"the {nprocs} gloo ranks did not finish in {timeout_s:.0f} s")


def section_two_ranks(ctx: Ctx, sec: Section) -> None:
    """Two gloo ranks on one device: their averaged gradients against the whole batch in one process."""
    model = copy.deepcopy(ctx.model).double()
    x = ctx.train[:4].double()
    y, t, z = noisy_batch(x)
    with tempfile.TemporaryDirectory() as tmp:
        blob, out = str(Path(tmp) / "in.pt"), str(Path(tmp) / "grads.pt")
        torch.save({"device": str(ctx.device), "preset": ctx.sizes.preset, "size": ctx.sizes.size,
                    "state": {k: v.cpu() for k, v in model.state_dict().items()},
                    "x": x.cpu(), "t": t.cpu(), "z": z.cpu()}, blob)
        run_spawned(2, (2, free_port(), blob, out), timeout_s=300)
        ddp = torch.load(out)
    model.zero_grad()
    losses.DualScoreMatching()(model, x, t, z).total.mean().backward()
    err = max(rel(ddp[n], p.grad) for n, p in model.named_parameters())
    sec.check("gradients, 2 gloo ranks vs one process, float64 (max rel)", err, TOL_DDP)
    sec.tables.append((["ranks", "backend", "batch", "grad max rel diff", "tolerance"],
                       [[2, "gloo", x.shape[0], err, TOL_DDP]]))


# ------------------------------------------------------------------------------- 7. resume
def resume_by_hand(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """The torch calls of dsm.train.state.load_state for the model and optimizer alone."""
    blob = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(blob["model"])
    opt.load_state_dict(blob["optimizer"])


def section_resume(ctx: Ctx, sec: Section) -> None:
    """Adam's ``step`` after save_state/load_state of a model on the device: on the CPU (neither
    fused nor capturable), as torch's Adam expects; the moments on the parameters' device."""
    from dsm.train.state import TrainState, load_state, save_state

    heavy = [m for m in HEAVY if m in sys.modules]
    sec.values["orchestration modules imported"] = heavy
    sec.check("Ray/MLflow/webdataset modules imported by the check", len(heavy), 0)
    torch.manual_seed(0)
    make = lambda: energy_model("tiny", 16).to(ctx.device)  # noqa: E731  (the device, not the size, matters)
    model, x = make(), ctx.train[:2, :, :16, :16]
    opt = torch.optim.Adam(model.parameters(), LR)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    sampler = noise.make_t_sampler("log_uniform", T_MIN, T_MAX)
    train_step(model, opt, losses.DualScoreMatching(), x, sampler, scheduler=sched)
    model2 = make()
    opt2 = torch.optim.Adam(model2.parameters(), LR)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        save_state(tmp, model=model, optimizer=opt, scheduler=sched, state=TrainState(step=1), config={},
                   batches_per_epoch=1, world_size=1)
        try:
            load_state(tmp, model=model2, optimizer=opt2, scheduler=sched2)  # reads on the CPU, places like torch
            sec.check("load_state for a model on the device raised (0 = no)", 0.0, 0.0)
        except Exception as e:  # still look at the optimizer, loaded with the same torch calls
            sec.check("load_state for a model on the device raised (0 = no)", 1.0, 0.0)
            sec.notes.append(f"load_state (model on {ctx.device}) raised {type(e).__name__}: {e}")
            resume_by_hand(Path(tmp), model2, opt2)
    states = [opt2.state[p] for p in model2.parameters()]
    group = opt2.param_groups[0]
    special = bool(group.get("fused") or group.get("capturable"))
    steps = sorted({str(s["step"].device) for s in states})
    moments = sorted({str(s["exp_avg"].device) for s in states})
    sec.values.update({"step devices": steps, "moment devices": moments, "fused or capturable": special})
    off_cpu = sum(s["step"].device.type != "cpu" for s in states)
    sec.check("Adam steps not on the CPU after resume", off_cpu, 0, asserted=not special)
    sec.check("Adam moments off the parameters' device", sum(s["exp_avg"].device != ctx.device for s in states), 0)
    res = train_step(model2, opt2, losses.DualScoreMatching(), x, sampler, scheduler=sched2)
    sec.check("the step after the resume is finite (0 = yes)", 0.0 if res.finite else 1.0, 0.0)
    sec.tables.append((["Adam step device", "moment device", "fused/capturable", "step after resume"],
                       [[", ".join(steps), ", ".join(moments), special, "finite" if res.finite else "non-finite"]]))


# ------------------------------------------------------------------------------- 8. scoring
def score_noise(keys: list[str], x: torch.Tensor, spec) -> None:
    """The keyed normal draws of one score_batch call, as dsm.core.deff.d_eff makes them: per t of the
    grid, chunks of keys, K draws per key, salted ``d_eff:<t>``, moved to x's device."""
    chunk = spec.batch_size  # d_eff's chunk: score_batch passes it batch_size * n_noise, split by n_noise
    for t in spec.t_grid:
        for i in range(0, x.shape[0], chunk):
            keyed_normal(keys[i:i + chunk], (spec.n_noise, *x.shape[1:]), salt=f"d_eff:{t!r}", dtype=x.dtype,
                         device=x.device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, device work included."""
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def section_scoring(ctx: Ctx, sec: Section) -> None:
    """One score_batch with the default ScoreSpec: the keyed-noise share of its time."""
    from dsm.scoring.columns import ScoreSpec, score_batch

    spec = ScoreSpec()
    n = min(ctx.args.score_images or ctx.sizes.score_images, ctx.held.shape[0])
    x, keys = ctx.held[:n], [f"gpu-check/{i}" for i in range(n)]
    batch = lambda: score_batch(ctx.model, x, keys, spec, eight_bit=False)  # noqa: E731
    repeats = ctx.sizes.repeats
    with precision_scope("fp32", ctx.device):  # dsm's default precision
        batch()  # warm-up: cuDNN, the allocator
        total = median_seconds(batch, ctx.device, repeats)
        noise_s = median_seconds(lambda: score_noise(keys, x, spec), ctx.device, repeats)
    share = 100 * noise_s / total
    sec.values.update({"images": n, "batch_s": total, "noise_s": noise_s, "device_s": total - noise_s,
                       "noise_share_percent": share, "t_grid": list(spec.t_grid), "n_noise": spec.n_noise})
    sec.check("keyed-noise share of a scoring batch (%)", share, TOL_NOISE_SHARE, "%", asserted=ctx.cuda)
    sec.tables.append((["images", "t levels x K", "batch (s)", "keyed noise (s)", "rest (s)", "noise share (%)"],
                       [[n, f"{len(spec.t_grid)} x {spec.n_noise}", total, noise_s, total - noise_s, share]]))


# ------------------------------------------------------------------------------- report
SECTIONS: list[tuple[str, str, Callable[[Ctx, Section], None]]] = [
    ("1_ops", "dsm's ops against stock ops", section_ops),
    ("2_cpu_vs_device", "CPU against the device, float64", section_cpu_vs_device),
    ("3_precision", "precision on the trained model", section_precision),
    ("4_throughput", "energy train-step throughput and memory", section_throughput),
    ("5_ddp_one_rank", "DDP, world size 1", section_ddp_one_rank),
    ("6_two_ranks", "two gloo ranks on one device", section_two_ranks),
    ("7_resume", "Adam's step after a resume", section_resume),
    ("8_scoring", "keyed noise in a scoring batch", section_scoring),
]


def header(ctx: Ctx) -> dict:
    """Machine, versions and the device, for the top of the report."""
    cuda = ctx.cuda
    return {
        "machine": machine(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(ctx.device), "device_name": torch.cuda.get_device_name(ctx.device) if cuda else "CPU",
        "mode": "quick" if ctx.args.quick else "full", "preset": ctx.sizes.preset, "image_size": ctx.sizes.size,
        "warm_steps": ctx.args.warm_steps, "data": ctx.data_source,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def fmt(v) -> str:
    """A table cell: n/a for None, 3 significant digits for floats."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def md_table(cols: list[str], rows: list[list]) -> list[str]:
    """A markdown table; a "|" inside a cell (``|d log p|``) is escaped so as not to split it."""
    cell = lambda v: fmt(v).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + \
        ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]


def markdown(head: dict, sections: list[Section], failures: list[str], seconds: float) -> str:
    """The report: header lines, the table of every check, then each section's own tables."""
    lines = [f"**{head['date']}, {head['device_name']}** ({head['mode']}: `{head['preset']}` preset at "
             f"3x{head['image_size']}x{head['image_size']}, {head['warm_steps']} fp32 warm-up steps on "
             f"{head['data']}; {seconds:.0f} s)", "",
             f"- machine: {head['machine']}",
             f"- torch {head['torch']}, CUDA {head['cuda'] or 'n/a'}, cuDNN {head['cudnn'] or 'n/a'}, "
             f"device {head['device']} ({head['device_name']})", ""]
    rows = []
    for s in sections:
        rows += [[s.key, c["name"], c["value"], f"<= {c['tol']:g}",
                  "report" if c["ok"] is None else ("pass" if c["ok"] else "**FAIL**")] for c in s.checks]
        if s.error:
            rows.append([s.key, "section ran", "raised", "", "**FAIL**"])
    lines += md_table(["section", "check", "value", "tolerance", "result"], rows)
    lines += ["", f"**{len(failures)} failure(s)**" + (": " + "; ".join(failures) if failures else ""), ""]
    for s in sections:
        lines += [f"#### {s.key}: {s.title} ({s.seconds:.1f} s)", ""]
        for cols, trows in s.tables:
            lines += md_table(cols, trows) + [""]
        lines += [f"- {n}" for n in s.notes] + ([f"- error: {s.error}"] if s.error else [])
        lines += [""] if s.notes or s.error else []
    return "\n".join(lines)


def run_section(ctx: Ctx, key: str, title: str, fn: Callable[[Ctx, Section], None]) -> Section:
    """Run one section; an exception is recorded as its failure, and the next section still runs."""
    sec = Section(key, title)
    t0 = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] {key}: {title} ...", file=sys.stderr, flush=True)
    try:
        fn(ctx, sec)
    except Exception as e:  # reported, not fatal: every section runs
        sec.error = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        traceback.print_exc()
    finally:
        if ctx.cuda:
            torch.cuda.empty_cache()
    sec.seconds = time.perf_counter() - t0
    return sec


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes: the tiny preset at 16x16, few steps")
    p.add_argument("--out", default="gpu-check", help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--warm-steps", type=int, default=None,
                   help="fp32 training steps before sections 1-3 and 5-8 (default 200; quick 10)")
    p.add_argument("--budget-s", type=float, default=200.0,
                   help="time budget (s) of section 4's batch grid; rows past it are skipped and listed")
    p.add_argument("--sections", default="", help="comma-separated keys or numbers to run (default: all)")
    p.add_argument("--preset", default=None, help="UNet preset (default paper; quick tiny)")
    p.add_argument("--size", type=int, default=None, help="image side (default 64; quick 16)")
    p.add_argument("--score-images", type=int, default=None, help="images in section 8's batch (default 64; quick 8)")
    args = p.parse_args(argv)
    if args.warm_steps is None:
        args.warm_steps = 10 if args.quick else 200
    return args


def setup(args: argparse.Namespace) -> tuple[Ctx, Section]:
    """Data, the energy and its fp32 warm-up training; a failed warm-up is reported, and the
    sections then run on the weights it left."""
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: --device cuda but torch sees no GPU (use --device cpu for the self-check)")
        # with its index: torch.cuda.set_device refuses a bare "cuda", and tensors report "cuda:0"
        device = torch.device("cuda", torch.cuda.current_device())
    base = QUICK if args.quick else FULL
    sizes = Sizes(args.preset or base.preset, args.size or base.size, *[getattr(base, f) for f in (
        "warm_batch", "eval_images", "batches", "precision_batch", "warmup", "repeats", "score_images")])
    n_train = max(sizes.warm_batch * 4, max(sizes.batches), sizes.precision_batch)
    n_eval = max(sizes.eval_images, args.score_images or 0)  # section 8 scores held-out crops
    data, source = natural_images(n_train + n_eval, sizes.size)
    data = data.to(device)
    torch.manual_seed(0)
    ctx = Ctx(args, device, sizes, data[:n_train], data[n_train:], energy_model(sizes.preset, sizes.size).to(device),
              source)
    return ctx, run_section(ctx, "0_warm_up", f"fp32 training, {args.warm_steps} steps", warm_up)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick and args.device == "cpu":
        # The self-check runs beside other tests on 2 shared cores: two OpenMP threads, one of
        # them waiting for a core that another process holds, made steps 50x slower.
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    ctx, warm = setup(args)
    wanted = {w.strip() for w in args.sections.split(",") if w.strip()}
    chosen = [s for s in SECTIONS if not wanted or s[0] in wanted or s[0].split("_")[0] in wanted]
    sections = [warm] + [run_section(ctx, *s) for s in chosen]
    failures = [f for s in sections for f in s.failures()]
    seconds = time.perf_counter() - t0
    head = header(ctx)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {**head, "seconds": seconds, "failures": failures,
           "tolerances": {"float64": TOL_F64, "fp32_ops": TOL_F32_OPS, "bits_per_dim": TOL_BITS, "ddp": TOL_DDP,
                          "noise_share_percent": TOL_NOISE_SHARE},
           "sections": {s.key: {"title": s.title, "seconds": s.seconds, "checks": s.checks, "values": s.values,
                                "notes": s.notes, "error": s.error} for s in sections}}
    (out / "gpu_check.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(head, sections, failures, seconds) + "\n")
    print(f"gpu_check: {len(failures)} failure(s) in {seconds:.0f} s; wrote {out / 'gpu_check.md'} and .json")
    for f in failures:
        print(f"  FAIL {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
