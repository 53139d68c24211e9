"""Per-image columns on an exact Gaussian, and the t-grid syntax."""

import math

import numpy as np
import pytest
import torch

from dsm.core import units
from dsm.scoring.columns import ScoreSpec, parse_t_grid, score_batch


def test_columns_match_the_closed_form(gaussian):
    x = gaussian.sample(400, torch.Generator().manual_seed(3)).float()
    keys = [f"{i:06d}" for i in range(400)]
    spec = ScoreSpec(t_grid=(0.01, 1.0), n_noise=16)
    cols = score_batch(gaussian, x, keys, spec, eight_bit=False)
    exact = gaussian.log_prob(x).double().numpy()
    np.testing.assert_allclose(cols["logp_nats"], exact, rtol=1e-6)
    np.testing.assert_allclose(cols["nll_bpd"], -exact / (5 * math.log(2)), rtol=1e-6)
    np.testing.assert_allclose(cols["logp_db_per_dim"], units.db_per_dim(torch.tensor(exact), 5).numpy(), rtol=1e-9)
    for i, t in enumerate(spec.t_grid):
        truth = gaussian.d_eff(x.double(), t).numpy()  # exact per example
        for est in ("deff_denoising", "deff_time"):
            err = cols[est][:, i] - truth
            se = math.sqrt((cols[f"{est}_stderr"][:, i] ** 2).sum()) / len(truth)
            assert abs(err.mean()) < 4 * se + 1e-9, (est, t, err.mean(), se)
        np.testing.assert_allclose(cols["mse"][:, i], cols["deff_denoising"][:, i] * t / 5)
        assert abs(np.mean(truth) - gaussian.mean_d_eff(t)) < 0.2


def test_rows_do_not_depend_on_the_batch(gaussian):
    x = gaussian.sample(12, torch.Generator().manual_seed(4)).float()
    keys = [str(i) for i in range(12)]
    spec = ScoreSpec(t_grid=(0.1,), n_noise=3)
    whole = score_batch(gaussian, x, keys, spec, eight_bit=False)
    parts = [score_batch(gaussian, x[a:a + 5], keys[a:a + 5], spec, eight_bit=False) for a in range(0, 12, 5)]
    for k, v in whole.items():
        np.testing.assert_allclose(np.concatenate([p[k] for p in parts]), v, rtol=1e-6, err_msg=k)


def test_t_grid_syntax():
    assert parse_t_grid("1e-2:1:3") == pytest.approx((0.01, 0.1, 1.0))
    assert parse_t_grid("0.5, 2") == (0.5, 2.0)
    assert parse_t_grid("") == ()
    for bad in ("1:0.1:3", "0:1:3", "2,1", "a,b", "1:2"):
        with pytest.raises(ValueError, match="t grid"):
            parse_t_grid(bad)
    with pytest.raises(ValueError, match="K"):
        ScoreSpec(n_noise=1)
