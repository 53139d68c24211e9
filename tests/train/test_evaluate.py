"""The training-time evaluation against an exact density: a Gaussian whose U is -log p exactly."""

import math

import pytest
import torch

from dsm.core import consistency as cons
from dsm.core import losses, noise, toy, units
from dsm.core.energy import Energy
from dsm.core.losses import BANDS, band_edges
from dsm.core.seeding import keyed_normal, keyed_uniform
from dsm.train import loop
from dsm.train.config import EvalConfig
from dsm.train.evaluate import consistency_options, denoising_figure, evaluate, metric_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Scaled(Energy):
    """1.05 U of an exact density: the wrong temperature, so Z moves with t and the heat equation fails."""

    def __init__(self, base: Energy, scale: float = 1.05):
        super().__init__(base.event_shape)
        self.base, self.scale = base, scale

    def energy(self, y, t):
        return self.scale * self.base.energy(y, t)


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
    assert res.band_edges == band_edges(1e-4, 1e3)


def test_training_and_evaluation_bin_t_by_the_same_float64_edges():
    """train/loss_band* (the worker loop) and eval/loss_band* (evaluate) use one function's edges;
    in float32 the inner edges would differ in their last digits, and a t on an edge could fall
    in one band for training and in the next for evaluation."""
    edges = band_edges(1e-4, 1e3)
    assert len(edges) == BANDS + 1 and edges[0] == pytest.approx(1e-4, rel=1e-15) and edges[-1] == 1e3
    assert edges == torch.logspace(-4, 3, BANDS + 1, dtype=torch.float64).tolist()
    assert edges != torch.logspace(-4, 3, BANDS + 1).tolist()  # float32 is not the same decision
    assert loop.band_edges is band_edges  # the worker's edges come from the same function


def test_consistency_metrics_with_the_training_defaults(gaussian):
    """eval.consistency (on by default): the consistency/* metrics, named as metric_names says;
    all in bounds on the exact density, out of bounds on 1.05 U."""
    opts = consistency_options(EvalConfig())
    assert opts is not None and consistency_options(EvalConfig(consistency=False)) is None
    x = gaussian.sample(400, torch.Generator().manual_seed(5))
    keys = [f"k{i}" for i in range(len(x))]
    kw = dict(loss_fn=losses.DualScoreMatching(), t_min=1e-4, t_max=1e3, psnrs=[0.0], log_z_t=None, eight_bit=False,
              batch_size=200, consistency=opts)
    m = evaluate(gaussian, x, keys, **kw).metrics
    names = metric_names(energy=True, psnrs=[0.0], consistency=opts, t_max=1e3)
    assert set(m) == names and names - metric_names(energy=True, psnrs=[0.0]) == cons.metric_names(
        opts, t_max=1e3, bands=BANDS)
    assert {"consistency/log_z_spread_nats", "consistency/log_z_nats_t333", "consistency/ode_gap_abs_nats_per_dim",
            f"consistency/heat_residual_rms_nats_per_dim_band{BANDS - 1}"} <= set(m)
    # log Z at t_max is the one eval/log_z reports (same estimator, data and noise)
    assert m["consistency/log_z_nats_t1000"] == pytest.approx(m["eval/log_z"], abs=1e-12)
    assert cons.out_of_bounds(m) == [], {k: v for k, v in m.items() if k.startswith("consistency/")}
    bad = evaluate(Scaled(gaussian), x, keys, **kw).metrics
    flagged = {line.split()[1] for line in cons.out_of_bounds(bad)}
    assert {"consistency/log_z_spread_nats", "consistency/ode_gap_abs_nats_per_dim",
            "consistency/near_gaussian_deviation"} <= flagged
    # score models have no energy: no consistency metrics
    assert not any(k.startswith("consistency/") for k in metric_names(energy=False, psnrs=[], consistency=opts,
                                                                      t_max=1e3))


def test_output_psnr_is_the_psnr_of_the_mean_mse_and_the_per_image_mean_is_kept(gaussian):
    x = gaussian.sample(400, torch.Generator().manual_seed(3))
    keys = [f"k{i}" for i in range(len(x))]
    m = evaluate(gaussian, x, keys, loss_fn=losses.DualScoreMatching(), t_min=1e-3, t_max=1e2, psnrs=[10.0, -10.0],
                 log_z_t=None, eight_bit=False, batch_size=128).metrics
    for p in (10.0, -10.0):
        t = noise.psnr_to_t(p)
        z = keyed_normal(keys, (x.shape[1],), salt="eval-psnr", dtype=x.dtype)
        y = x + math.sqrt(t) * z
        mse = (gaussian.denoise(y, torch.full((len(x),), t, dtype=x.dtype)) - x).double().square().mean(1)
        assert m[f"eval/psnr_out_in{p:g}dB"] == pytest.approx(float(-10 * torch.log10(mse.mean())), abs=1e-4)
        assert m[f"eval/psnr_out_mean_per_image_in{p:g}dB"] == pytest.approx(float((-10 * torch.log10(mse)).mean()),
                                                                            abs=1e-4)
        # Jensen: the mean of per-image PSNRs exceeds the PSNR of the mean MSE when the MSEs spread.
        assert m[f"eval/psnr_out_mean_per_image_in{p:g}dB"] > m[f"eval/psnr_out_in{p:g}dB"] + 0.01


def test_loss_under_the_training_t_law(gaussian):
    """eval/loss_train_t_dist: one log-uniform t on [t_min, t_max] per key, the official "test loss"."""
    x = gaussian.sample(1000, torch.Generator().manual_seed(4))
    keys = [f"k{i}" for i in range(len(x))]
    loss_fn = losses.DualScoreMatching()
    t_min, t_max = 1e-3, 1e2
    m = evaluate(gaussian, x, keys, loss_fn=loss_fn, t_min=t_min, t_max=t_max, psnrs=[], log_z_t=None,
                 eight_bit=False, batch_size=250).metrics
    u = keyed_uniform(keys, (), "eval-train-t", dtype=torch.float64)
    t = torch.exp(math.log(t_min) + u * (math.log(t_max) - math.log(t_min)))
    assert t.min() < 2 * t_min and t.max() > t_max / 2  # the whole training range, not one band
    z = keyed_normal(keys, (x.shape[1],), salt="eval-train-t-z", dtype=x.dtype)
    per_example = loss_fn(gaussian, x, t.to(x.dtype), z).total.detach().double()
    assert m["eval/loss_train_t_dist"] == pytest.approx(float(per_example.mean()), rel=1e-6)
    # The band-stratified eval/loss estimates the same expectation.
    se = float(per_example.std() / math.sqrt(len(x)))
    assert abs(m["eval/loss_train_t_dist"] - m["eval/loss"]) < 4 * se


def test_evaluation_does_not_depend_on_batch_size(gaussian):
    x = gaussian.sample(300, torch.Generator().manual_seed(2))
    keys = [str(i) for i in range(300)]
    kw = dict(loss_fn=losses.DualScoreMatching(), t_min=1e-3, t_max=1e2, psnrs=[10.0], log_z_t=50.0,
              eight_bit=False, consistency=cons.Options(ode_images=2, ode_steps=8, heat_examples=16))
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


def test_consistency_fields_are_validated():
    from pydantic import ValidationError

    for bad in ({"hutchinson_probes": 3}, {"log_z_ts": [1000.0]}, {"log_z_ts": [0.0, 10.0]}, {"ode_images": -1}):
        with pytest.raises(ValidationError):
            EvalConfig(**bad)
    opts = consistency_options(EvalConfig(log_z_ts=[10.0, 20.0], ode_images=0, heat_examples=0))
    names = metric_names(energy=True, psnrs=[], consistency=opts, t_max=1e3)
    assert {n for n in names if n.startswith("consistency/")} == {
        "consistency/log_z_spread_nats", "consistency/log_z_chi2", "consistency/log_z_nats_t10",
        "consistency/log_z_nats_t20", "consistency/log_z_stderr_nats_t10", "consistency/log_z_stderr_nats_t20"}
