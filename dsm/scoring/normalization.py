"""``dsm normalize``: estimate log Z of an exported model on held-out data and store it in the file.

log Z is estimated at a large noise variance t (default: the model's training t_max) with the
paired estimator and its standard error, and checked by the several-large-t agreement
diagnostic (the same data and noise at t/10, t/3 and t, :func:`dsm.core.consistency.log_z_ts`; ``dsm
normalize`` warns when their spread is beyond :data:`dsm.core.consistency.LOG_Z_SPREAD_MAX_NATS`). The
bundle is rewritten atomically with the new log Z and a record of how it was obtained.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dsm.core.bundle import Bundle, load_model, save_bundle
from dsm.core.consistency import log_z_ts
from dsm.core.energy import Energy, as_input
from dsm.core.normalize import estimate_log_z, log_z_agreement
from dsm.core.precision import check_precision, device_kind, precision_scope
from dsm.data.inputs import iter_examples, open_input


def normalize_model(path: str | Path, data: str | Path, *, samples: int = 2000, t: float | None = None,
                    batch_size: int = 256, precision: str = "fp32", gpu: bool = False, address: str | None = None,
                    resource_timeout_s: float | None = None) -> dict:
    """Estimate and store log Z (nats); returns the normalization record saved in the bundle.

    precision: one of :data:`dsm.core.precision.PRECISIONS`, the arithmetic of the energy evaluations
    (U's reductions stay float32 under bf16); recorded with the device in the record.
    gpu: run the estimate in a Ray task holding one GPU (of the cluster at ``address``, default
    $RAY_ADDRESS, else a local Ray), waiting at most ``resource_timeout_s`` for it; the held-out
    examples are read here and sent with the task, so no node needs to see the data.
    """
    return normalize_bundle(load_model(path), path, data, samples=samples, t=t, batch_size=batch_size,
                            precision=precision, gpu=gpu, address=address, resource_timeout_s=resource_timeout_s)


def normalize_bundle(b: Bundle, path: str | Path, data: str | Path, *, samples: int = 2000, t: float | None = None,
                     batch_size: int = 256, precision: str = "fp32", gpu: bool = False, address: str | None = None,
                     resource_timeout_s: float | None = None) -> dict:
    """:func:`normalize_model` on the bundle ``b`` already read from ``path`` (where it is stored again)."""
    if not isinstance(b.model, Energy):
        raise ValueError(f"{path}: a score-network baseline has no energy to normalize")
    keys, x, where = read_held_out(data, b.shape, samples)
    record = normalization_record(b.model, b.shape, x, keys, t=float(t or b.t_range[1]), batch_size=batch_size,
                                  precision=precision, gpu=gpu, address=address,
                                  resource_timeout_s=resource_timeout_s, error_log=Path(path).resolve().parent)
    record = {**record, "data": where}
    save_bundle(path, b.model, b.config, b.shape, b.is_image, normalization=record, meta=b.meta,
                eight_bit=b.eight_bit)
    return record


def read_held_out(data: str | Path, shape: tuple[int, ...], samples: int) -> tuple[list[str], torch.Tensor, str]:
    """The first ``samples`` examples of ``data`` (shards, a .npy or an image folder, as ``dsm
    score`` reads them: 8-bit pixels as k/255): (keys, x (n, *shape) float32, the data's path)."""
    if samples < 2:
        raise ValueError(f"--samples must be >= 2, got {samples}")
    inp = open_input(data)
    if tuple(inp.shape) != tuple(shape):
        raise ValueError(f"{inp.path}: data of shape {inp.shape} does not match the model's {tuple(shape)}")
    keys, xs = [], []
    for k, x, _ in iter_examples(inp, samples):
        keys += k
        xs.append(torch.from_numpy(x))
    return keys, torch.cat(xs), str(inp.path)


def normalization_record(model: Energy, shape: tuple[int, ...], x: torch.Tensor, keys: list, *, t: float,
                         batch_size: int = 256, precision: str = "fp32", gpu: bool = False,
                         address: str | None = None, resource_timeout_s: float | None = None,
                         error_log: Path | None = None, device: str = "cpu") -> dict:
    """Estimate log Z (nats) of ``model`` at noise variance ``t`` on held-out ``x`` (n, *shape)
    with seeds ``keys``, and set it on the model; returns the record (see :func:`log_z_record`).
    device: where to compute in this process (the model moves there); gpu: in a Ray GPU task
    instead (see :func:`normalize_model`), its traceback in ``error_log``'s folder."""
    check_precision(precision)
    args = (model, as_input(model, x, shape), keys, t, batch_size, precision)
    if gpu:
        record = _on_gpu(error_log or Path.cwd(), args, address, resource_timeout_s)
    else:
        record = log_z_record(*args, device=device)
    model.log_z.fill_(record["value"])
    return record


def _on_gpu(folder: Path, args: tuple, address: str | None, resource_timeout_s: float | None) -> dict:
    """:func:`log_z_record` in a GPU task, through dsm.runtime.driver (failures as one line, the
    traceback in ``normalize-error.log`` beside the model)."""
    from dsm.runtime.driver import Job, gpu_task
    from dsm.runtime.resources import DEFAULT_TIMEOUT_S

    job = Job("normalize", address, storage=None, error_log=folder / "normalize-error.log",
              resume_hint="re-run the same command", log_to_driver=False,
              resource_timeout_s=resource_timeout_s or DEFAULT_TIMEOUT_S)
    return gpu_task(job, _log_z_record_on, args, "cuda")


def _log_z_record_on(args: tuple, device: str) -> dict:
    return log_z_record(*args, device=device)


def log_z_record(model: Energy, x: torch.Tensor, keys: list, t: float, batch_size: int, precision: str, *,
                 device: str) -> dict:
    """log Z of ``model`` at noise variance ``t`` on held-out ``x`` (B, *event_shape), and the
    several-t agreement, computed on ``device``: the record :func:`normalize_model` stores
    (without its data path). The model is moved to ``device``."""
    model, x = model.to(device), x.to(device)
    with precision_scope(precision, x.device):
        est = estimate_log_z(model, x, t, keys=keys, batch_size=batch_size)
        agree = log_z_agreement(model, x, log_z_ts(t), keys=keys, batch_size=batch_size)
    return {**est.as_dict(), "precision": precision, "device": device_kind(x.device),
            "agreement": {"t": [e.t for e in agree.estimates], "log_z": [e.value for e in agree.estimates],
                          "stderr": [e.stderr for e in agree.estimates], "chi2": agree.chi2,
                          "max_abs_diff": agree.max_abs_diff, "consistent": agree.consistent}}
