"""A ``dsm score`` output read back: the parquet parts as numpy columns, with ``scores.json``
(:class:`Scores`), and the scored images piece by piece (:func:`iter_pieces`). Shared by the
report (``dsm.report.build``) and its baselines (``dsm.report.baselines``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dsm.plumbing.store import Location, is_remote

if TYPE_CHECKING:
    from dsm.data.inputs import Input


@dataclass
class Scores:
    """A scored data set: the table as numpy columns, and what scores.json says about it."""

    root: Path | Location  # a Location for scores at a URL
    keys: list[str]
    logp_nats: np.ndarray  # (n,)
    logp_db: np.ndarray  # (n,) dB/dim
    nll_bpd: np.ndarray  # (n,) bits/dim, in the convention of `eight_bit`
    t_grid: np.ndarray  # (T,) noise variances, increasing; empty without grid columns
    grids: dict[str, np.ndarray]  # name -> (n, T)
    d: int
    eight_bit: bool
    info: dict = field(default_factory=dict)  # scores.json (empty when absent)

    @property
    def n(self) -> int:
        return len(self.keys)


def resolve_scores_dir(path: str | Path) -> Path | Location:
    """The ``dsm score --out`` folder, given it or its ``parts`` folder (which ``dsm score``
    prints): a local path, or a Location for a URL (dsm.plumbing.store)."""
    if is_remote(path):
        loc = Location.of(path)
        if loc.name == "parts" and not any(n.endswith(".parquet") for n in (loc / "parts").listing()):
            loc = loc.parent
        if not any(n.startswith("part-") for n in (loc / "parts").listing()):
            raise ValueError(f"{loc}: no parquet parts under {loc / 'parts'} (is this a `dsm score --out` URL?)")
        return loc
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise ValueError(f"{p}: no such scores folder (give dsm score's --out folder or its parts/)")
    if p.name == "parts" and not (p / "parts").is_dir():
        p = p.parent
    if not any((p / "parts").glob("part-*.parquet")):
        raise ValueError(f"{p}: no parquet parts under {p / 'parts'} (is this a `dsm score --out` folder?)")
    return p


def read_scores_dir(path: str | Path, d: int | None = None) -> Scores:
    """Read the parts and scores.json (a local folder or a URL). d (dimensions per image):
    scores.json's ``summary.dim``, else the argument, else recovered from log p in nats against
    dB/dim."""
    from dsm.scoring.job import read_scores

    root = resolve_scores_dir(path)
    info: dict = {}
    opt_file = root / "scores.json"
    if opt_file.is_file():
        try:
            info = json.loads(opt_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{opt_file}: not valid JSON ({e})") from None
    table = read_scores(root)
    missing = [c for c in ("key", "logp_nats", "logp_db_per_dim", "nll_bpd") if c not in table.column_names]
    if missing:
        raise ValueError(f"{root / 'parts'}: missing column(s) {', '.join(missing)} (not written by dsm score?)")
    col = lambda c: np.asarray(table.column(c).to_numpy(), dtype=np.float64)
    logp, db, nll = col("logp_nats"), col("logp_db_per_dim"), col("nll_bpd")
    t_grid = info.get("options", {}).get("t_grid")
    if t_grid is None:  # every part records its grid (dsm.scoring.job.PieceScorer)
        meta = table.schema.metadata or {}
        t_grid = json.loads(meta.get(b"dsm.t_grid", b"[]"))
    grids = {c: np.asarray(table.column(c).to_pylist(), dtype=np.float64).reshape(len(logp), -1)
             for c in ("mse", "deff_denoising", "deff_time", "deff_denoising_stderr", "deff_time_stderr")
             if c in table.column_names}
    d = int(info.get("summary", {}).get("dim") or d or _dim_from_units(logp, db, root))
    # 8-bit convention: nll = 8 - log p / (d ln 2); plain: nll = -log p / (d ln 2).
    offset = float(np.median(nll + logp / (d * math.log(2))))
    return Scores(root, [str(k) for k in table.column("key").to_pylist()], logp, db, nll,
                  np.asarray(t_grid, dtype=np.float64), grids, d, abs(offset - 8) < 1e-3, info)


def _dim_from_units(logp: np.ndarray, db: np.ndarray, root: Path | Location) -> int:
    ok = np.abs(db) > 1e-9
    if not ok.any():
        raise ValueError(f"{root}: cannot tell the dimension d (no scores.json summary); pass --model")
    return round(float(np.median(10 * logp[ok] / (db[ok] * math.log(10)))))


def iter_pieces(inp: Input, shape: Sequence[int] | None = None, pieces: Sequence[int] | None = None):
    """(keys, x (n, *shape) float32) per piece of an opened input (``dsm.data.inputs.open_input``:
    the reader ``dsm score`` uses, so keys and pixel values, k/255 for 8-bit data, are the scored
    ones); x reshaped to ``shape`` when the data stores flat vectors; only ``pieces`` when given."""
    for i in range(len(inp.pieces)) if pieces is None else pieces:
        keys, x, _ = inp.read(i)
        if shape is not None and tuple(x.shape[1:]) != tuple(shape):
            x = x.reshape(len(x), *shape)
        yield keys, x
