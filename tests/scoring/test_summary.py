"""The scoring summary: what `dsm score` prints and stores in scores.json."""

import math

import numpy as np
import pyarrow as pa
import pytest

from dsm.scoring.summary import format_summary, summarize


def _table(logp):
    logp = np.asarray(logp, dtype=np.float64)
    d = 4
    return pa.table({"key": [f"{i:06d}" for i in range(len(logp))], "logp_nats": logp,
                     "nll_bpd": -logp / (d * math.log(2)), "logp_db_per_dim": logp / d})


def test_a_non_finite_row_is_named_and_never_averaged():
    s = summarize(_table([-1.0, np.nan, -3.0, np.inf]), (), 4)
    assert s["n"] == 2 and s["logp_nats_mean"] == pytest.approx(-2.0)
    assert s["non_finite_rows"] == 2 and s["non_finite_keys"] == ["000001", "000003"]
    text = format_summary(s)
    assert "nan" not in text.lower().replace("non-finite", "") and "000001, 000003" in text
    with pytest.raises(ValueError, match="every one of the 2 scored rows"):
        summarize(_table([np.nan, np.nan]), (), 4)
