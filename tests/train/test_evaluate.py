"""The training-time evaluation against an exact density: a Gaussian whose U is -log p exactly."""

import math

import pytest
import torch

from dsm import losses, noise, toy, units
from dsm.train.evaluate import BANDS, denoising_figure, evaluate, metric_names


@pytest.fixture(scope="module")
def gaussian():
    d = 6
    g = torch.Generator().manual_seed(0)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.3
    cov = a @ a.T + 0.05 * torch.eye(d, dtype=torch.float64)
    mean = torch.rand(d, generator=g, dtype=torch.float64)
    return toy.Gaussian(mean, cov)


def test_exact_energy_gives_zero_log_z_and_its_own_nll(gaussian):
    x = gaussian.sample(4000, torch.Generator().manual_seed(1))
    keys = [f"k{i}" for i in range(len(x))]
    res = evaluate(gaussian, x, keys, loss_fn=losses.DualScoreMatching(), t_min=1e-4, t_max=1e3,
                   psnrs=[20.0, 0.0], log_z_t=None, eight_bit=False, batch_size=500)
    m = res.metrics
    # U is -log p exactly, so log Z = 0 within the estimator's error.
    assert abs(m["eval/log_z"]) < 4 * m["eval/log_z_stderr"] + 1e-9, m
    exact = units.bits_per_dim(gaussian.log_prob(x) + float(gaussian.log_z), x.shape[1]).mean()
    assert m["eval/nll_bpd"] == pytest.approx(float(exact) + m["eval/log_z"] / (x.shape[1] * math.log(2)), rel=1e-9)
    # The exact posterior-mean denoiser beats the noisy input.
    assert m["eval/psnr_out_in20dB"] > 20 and m["eval/psnr_out_in0dB"] > 0
    assert len([k for k in m if k.startswith("eval/loss_band")]) == BANDS
    assert all(math.isfinite(v) for v in m.values())
    # what dsm tune validates a sweep's metric against is exactly what evaluation returns
    assert set(m) == metric_names(energy=True, psnrs=[20.0, 0.0])


def test_evaluation_does_not_depend_on_batch_size(gaussian):
    x = gaussian.sample(300, torch.Generator().manual_seed(2))
    keys = [str(i) for i in range(300)]
    kw = dict(loss_fn=losses.DualScoreMatching(), t_min=1e-3, t_max=1e2, psnrs=[10.0], log_z_t=50.0,
              eight_bit=False)
    a = evaluate(gaussian, x, keys, batch_size=300, **kw).metrics
    b = evaluate(gaussian, x, keys, batch_size=7, **kw).metrics
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12), k


def test_denoising_figure(tmp_path):
    x = torch.rand(4, 1, 8, 8)
    path = denoising_figure(x, {20.0: x, 0.0: x * 0.5}, str(tmp_path / "sub" / "grid.png"))
    assert (tmp_path / "sub" / "grid.png").stat().st_size > 1000 and path.endswith("grid.png")
    assert noise.psnr_to_t(20.0) == pytest.approx(0.01)
