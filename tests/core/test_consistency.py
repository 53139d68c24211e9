"""dsm.core.consistency on exact densities (every check zero within its error) and on deliberately
inconsistent ones (every check that can see the fault flags it)."""

import math

import pytest
import torch

from dsm.core import consistency as cons
from dsm.core import toy
from dsm.core.energy import Energy

T_MIN, T_MAX = 1e-4, 1e3
EDGES = torch.logspace(-4, 3, 5, dtype=torch.float64).tolist()  # the evaluation's 4 bands


class Perturbed(Energy):
    """``scale * U(y, stretch * t) + c + c_of_t * log t`` of an exact density.

    stretch: the wrong time dependence (still normalized at every t, so log Z cannot see it);
    scale: the wrong temperature (log Z then moves with t); c: a constant (log Z = -c, which
    no consistency metric may see); c_of_t: a spurious c(t), a heat residual of c_of_t / t."""

    def __init__(self, base: Energy, stretch=1.0, scale=1.0, c=0.0, c_of_t=0.0):
        super().__init__(base.event_shape)
        self.base, self.stretch, self.scale, self.c, self.c_of_t = base, stretch, scale, c, c_of_t

    def energy(self, y, t):
        return self.scale * self.base.energy(y, self.stretch * t) + self.c + self.c_of_t * torch.log(t)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mixture():
    return toy.anisotropic_mixture(4, n_components=3, seed=6, scale_range=(0.2, 0.8))


@pytest.fixture(scope="module")
def heldout(mixture):
    x = mixture.sample(512, torch.Generator().manual_seed(1), dtype=torch.float64)
    return x, [f"k{i}" for i in range(len(x))]


OPTS = cons.Options(ode_images=4, ode_steps=96, heat_examples=64)  # 96 Heun steps: Heun's error < 0.01 here
FAST = cons.Options(ode_images=4, ode_steps=32, heat_examples=64)  # for faults far beyond Heun's error


def test_exact_density_is_consistent(mixture, heldout):
    x, keys = heldout
    c = cons.check(mixture, x, keys, band_edges=EDGES, options=OPTS)
    m = c.metrics()
    assert set(m) == cons.metric_names(OPTS, t_max=T_MAX, bands=4)
    assert [e.t for e in c.log_z.estimates] == pytest.approx([100, 1000 / 3, 1000])
    for e in c.log_z.estimates:  # normalized: log Z = 0 at every t
        assert abs(e.value) < 4 * e.stderr + 1e-3, e
    assert c.log_z.consistent and m["consistency/log_z_spread_nats"] < 0.01
    # the exact Laplacian at d = 4: no probe noise; what is left of the gap is Heun's error
    assert c.ode.exact and (c.ode.gap.abs() < 0.01).all(), c.ode.gap
    for b in c.heat:
        assert b.rms < 1e-6, b  # the heat equation holds to rounding
    g = c.near_gaussian
    assert abs(g.deviation) < 4 * g.stderr + 1e-4 and g.expected == pytest.approx(1 - 1e-3, abs=1e-3)
    assert cons.out_of_bounds(m) == []


def test_exact_density_with_hutchinson_probes_is_zero_within_its_errors():
    """Above EXACT_LAPLACIAN_MAX_DIM the Laplacians are Hutchinson estimates: zero within their error bars."""
    mix = toy.anisotropic_mixture(cons.EXACT_LAPLACIAN_MAX_DIM + 4, n_components=2, seed=2, scale_range=(0.3, 0.8))
    x = mix.sample(64, torch.Generator().manual_seed(3), dtype=torch.float64)
    keys = list(range(64))
    c = cons.check(mix, x, keys, band_edges=EDGES, options=cons.Options(ode_images=2, ode_steps=64, heat_examples=64))
    assert not c.ode.exact and (c.ode.stderr > 0).all()
    assert (c.ode.gap.abs() < 4 * c.ode.stderr + 0.03).all(), (c.ode.gap, c.ode.stderr)  # + Heun's error at 64 steps
    for b in c.heat:
        assert abs(b.mean_square) < 4 * b.mean_square_stderr + 1e-12, b
    assert abs(c.near_gaussian.deviation) < 4 * c.near_gaussian.stderr + 1e-4


def test_wrong_time_dependence_is_flagged(mixture, heldout):
    """U(y, 1.2 t): a normalized density at every t (log Z stays 0), but not one flowing under
    the heat equation: the ODE gap, the heat residual and the near-Gaussian Laplacian see it."""
    x, keys = heldout
    m = cons.check(Perturbed(mixture, stretch=1.2), x, keys, band_edges=EDGES, options=FAST).metrics()
    assert m["consistency/log_z_spread_nats"] < 0.01
    assert m["consistency/ode_gap_abs_nats_per_dim"] > 2 * cons.ODE_GAP_ABS_MAX_NATS_PER_DIM
    assert m["consistency/near_gaussian_t_lap_per_dim"] == pytest.approx(1 / 1.2, abs=0.01)
    for i in (1, 2, 3):  # at the smallest t the stretch changes little (t << the data's variances)
        rms = m[f"consistency/heat_residual_rms_nats_per_dim_band{i}"]
        assert rms > 2 * cons.HEAT_RESIDUAL_RMS_MAX_NATS_PER_DIM + 4 * m[
            f"consistency/heat_residual_rms_stderr_nats_per_dim_band{i}"]
    flagged = {line.split()[1] for line in cons.out_of_bounds(m)}
    assert {"consistency/ode_gap_abs_nats_per_dim", "consistency/near_gaussian_deviation",
            "consistency/heat_residual_rms_nats_per_dim_band3"} <= flagged
    assert "consistency/log_z_spread_nats" not in flagged


def test_wrong_temperature_is_flagged_by_every_check(mixture, heldout):
    """1.05 U: Z then depends on t (by about 0.05 d/2 log 10 nats from t = 100 to 1000)."""
    x, keys = heldout
    c = cons.check(Perturbed(mixture, scale=1.05), x, keys, band_edges=EDGES, options=FAST)
    m = c.metrics()
    assert m["consistency/log_z_spread_nats"] == pytest.approx(0.05 * 4 / 2 * math.log(10), rel=0.15)
    assert not c.log_z.consistent
    assert m["consistency/ode_gap_abs_nats_per_dim"] > 2 * cons.ODE_GAP_ABS_MAX_NATS_PER_DIM
    assert m["consistency/near_gaussian_deviation"] == pytest.approx(0.05, abs=0.005)
    flagged = {line.split()[1] for line in cons.out_of_bounds(m)}
    assert flagged >= {"consistency/log_z_spread_nats", "consistency/ode_gap_abs_nats_per_dim",
                       "consistency/near_gaussian_deviation", "consistency/heat_residual_rms_nats_per_dim_band3"}


def test_ode_gap_ignores_log_z_and_integrates_the_heat_residual(mixture, heldout):
    """The ODE's endpoint is the model's own -U(y_T, T), so a constant in U (a wrong log Z)
    leaves the gap unchanged to rounding, while a spurious c(t) = a log t, a heat residual
    R = a / t, adds exactly int_t0^T R dt = a log(T / t0) nats whatever Heun's error."""
    x, keys = heldout
    x4, k4 = x[:4], keys[:4]
    kw = dict(t_start=T_MIN, t_end=T_MAX, steps=16, probes=None)
    base = cons.ode_gap(mixture, x4, k4, **kw).gap
    shifted = cons.ode_gap(Perturbed(mixture, c=-7.25), x4, k4, **kw).gap
    assert torch.allclose(shifted, base, atol=1e-9)
    drift = cons.ode_gap(Perturbed(mixture, c_of_t=0.05), x4, k4, **kw).gap
    assert torch.allclose(drift - base, torch.full_like(base, 0.05 * math.log(T_MAX / T_MIN) / 4), atol=1e-9)


def test_warning_lines_and_bounds():
    m = {"consistency/log_z_spread_nats": 2.23, "consistency/log_z_chi2": 1e6,
         "consistency/ode_gap_abs_nats_per_dim": 0.01, "consistency/heat_residual_rms_nats_per_dim_band2": 0.02,
         "consistency/heat_residual_rms_stderr_nats_per_dim_band2": 0.5, "consistency/near_gaussian_deviation": -0.03}
    lines = cons.out_of_bounds(m)
    assert lines[0] == ("WARNING: consistency/log_z_spread_nats = 2.23 is beyond its bound 0.1 "
                        "(max - min of log Z over large t; see docs/scoring.md)")
    assert [ln.split()[1] for ln in lines] == ["consistency/log_z_spread_nats",
                                               "consistency/heat_residual_rms_nats_per_dim_band2",
                                               "consistency/near_gaussian_deviation"]  # |deviation| is bounded
    assert cons.bound_of("consistency/heat_residual_rms_stderr_nats_per_dim_band2") is None
    assert cons.out_of_bounds({"consistency/ode_gap_abs_nats_per_dim": float("nan")})  # NaN is never in bounds
    assert cons.HEAT_RESIDUAL_RMS_MAX_NATS_PER_DIM == pytest.approx(0.0031, abs=1e-4)
    with pytest.raises(ValueError, match="even"):
        cons.Options(hutchinson_probes=3)
    with pytest.raises(ValueError, match="two noise variances"):
        cons.Options(log_z_ts=(1000.0,))
