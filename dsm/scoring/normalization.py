"""``dsm normalize``: estimate log Z of an exported model on held-out data and store it in the file.

log Z is estimated at a large noise variance t (default: the model's training t_max) with the
paired estimator and its standard error, and checked by the several-large-t agreement
diagnostic (the same data and noise at t/10, t/3 and t, :func:`dsm.consistency.log_z_ts`; ``dsm
normalize`` warns when their spread is beyond :data:`dsm.consistency.LOG_Z_SPREAD_MAX_NATS`). The
bundle is rewritten atomically with the new log Z and a record of how it was obtained.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dsm.bundle import load_model, save_bundle
from dsm.consistency import log_z_ts
from dsm.data.inputs import iter_examples, open_input
from dsm.energy import Energy
from dsm.normalize import estimate_log_z, log_z_agreement


def normalize_model(path: str | Path, data: str | Path, *, samples: int = 2000, t: float | None = None,
                    batch_size: int = 256) -> dict:
    """Estimate and store log Z; returns the normalization record saved in the bundle."""
    b = load_model(path)
    if not isinstance(b.model, Energy):
        raise ValueError(f"{path}: a score-network baseline has no energy to normalize")
    inp = open_input(data)
    if tuple(inp.shape) != tuple(b.shape):
        raise ValueError(f"{inp.path}: data of shape {inp.shape} does not match the model's {tuple(b.shape)}")
    if samples < 2:
        raise ValueError(f"--samples must be >= 2, got {samples}")
    keys, xs = [], []
    for k, x, _ in iter_examples(inp, samples):
        keys += k
        xs.append(torch.from_numpy(x))
    x = torch.cat(xs)
    if b.model_config.arch == "mlp":
        x = x.flatten(1)
    t = float(t or b.t_range[1])
    est = estimate_log_z(b.model, x, t, keys=keys, batch_size=batch_size)
    agree = log_z_agreement(b.model, x, log_z_ts(t), keys=keys, batch_size=batch_size)
    b.model.log_z.fill_(est.value)
    record = {**est.as_dict(), "data": str(inp.path),
              "agreement": {"t": [e.t for e in agree.estimates], "log_z": [e.value for e in agree.estimates],
                            "stderr": [e.stderr for e in agree.estimates], "chi2": agree.chi2,
                            "max_abs_diff": agree.max_abs_diff, "consistent": agree.consistent}}
    save_bundle(path, b.model, b.config, b.shape, b.is_image, normalization=record, meta=b.meta)
    return record
