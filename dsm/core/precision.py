"""Numerical precision as an explicit setting: fp32 (the default), tf32 or bf16.

log p is dsm's product, so the default is plain float32 with TensorFloat-32 explicitly off:
torch enables TF32 for cuDNN convolutions by default, so a GPU run that set nothing would
silently compute in TF32 while a CPU run computes in float32.

``fp32``  float32 everywhere; TF32 off for matmuls (cuBLAS) and cuDNN convolutions.
``tf32``  TF32 on for those matmuls and convolutions (Ampere and later GPUs; a no-op on CPU).
``bf16``  the network body under ``torch.autocast(dtype=bfloat16)``, TF32 off. The energy's
          reductions (the inner product <y, f>, sums over pixels, the c(t) head, log Z) stay in
          float32 (:func:`full_precision`, :func:`as_dtype` in :class:`dsm.core.energy.EnergyModel`).

fp16 is not offered: the network output reaches ~3e4 |z| at t = 1e-9, beyond what fp16's
range and 11-bit mantissa carry through a double backward.

TF32 goes through torch's ``allow_tf32`` switches: in torch 2.13 they set the per-backend
``fp32_precision`` state coherently and warn about nothing, whereas setting only the
per-operator ``fp32_precision`` attributes leaves a state in which torch refuses to answer
``torch.get_float32_matmul_precision()`` (a "mix of the legacy and new APIs" error).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

Precision = Literal["fp32", "tf32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")


def check_precision(precision: str) -> str:
    """``precision`` itself if it is one of :data:`PRECISIONS`, else ValueError naming them."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def tf32_flags() -> tuple[bool, bool]:
    """(TF32 allowed for cuBLAS matmuls, TF32 allowed for cuDNN), torch's process-wide switches."""
    return bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)


def _set_tf32(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


@contextmanager
def precision_scope(precision: str, device: torch.device | str) -> Iterator[None]:
    """Run the enclosed code at ``precision`` (one of :data:`PRECISIONS`) on ``device``.

    Sets the TF32 switches (on only for ``tf32``) and restores their previous values on exit,
    also after an exception. ``bf16`` enters ``torch.autocast(device_type, bfloat16)``; ``fp32``
    and ``tf32`` disable any autocast around them, so that an fp32 evaluation inside a bf16
    region is still fp32. The switches are process-wide: scopes in concurrent threads would race.
    """
    check_precision(precision)
    device_type = torch.device(device).type
    saved = tf32_flags()
    try:
        _set_tf32(precision == "tf32", precision == "tf32")
        if precision == "bf16":
            with torch.autocast(device_type, dtype=torch.bfloat16):
                yield
        else:
            with torch.autocast(device_type, enabled=False):
                yield
    finally:
        _set_tf32(*saved)


def full_precision(device: torch.device | str):
    """A context with autocast off on ``device``: for the reductions that make U and log p, which
    stay float32 (or float64) whatever the network body ran in."""
    return torch.autocast(torch.device(device).type, enabled=False)


def as_dtype(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``out`` cast (differentiably) to the floating dtype of ``like``: a backbone output that
    autocast made bfloat16 goes back to the input's float32 before it is reduced."""
    return out if out.dtype == like.dtype else out.to(like.dtype)


def device_kind(device: torch.device | str) -> str:
    """The device for records: "cpu", or "cuda: <device name>" (e.g. "cuda: NVIDIA H100 80GB HBM3")."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type
