"""dsm.stats.density against known laws and hand-computed numbers."""

import math

import numpy as np
import pytest
from scipy import stats

from dsm.stats import density as ds


def test_gumbel_fit_recovers_location_and_scale():
    # The paper's fit (loc 9.57, scale 3.17 dB/dim). With n = 20000 the ML standard errors are
    # about 1.05 scale / sqrt(n) = 0.024 (loc) and 0.78 scale / sqrt(n) = 0.018 (scale): 0.08 is > 3 of them.
    x = stats.gumbel_r.rvs(loc=9.57, scale=3.17, size=20000, random_state=np.random.default_rng(0))
    fit = ds.gumbel_fit(x)
    assert fit.tail == "right"
    assert abs(fit.loc - 9.57) < 0.08 and abs(fit.scale - 3.17) < 0.08, fit
    assert fit.ks_stat < 0.015 and fit.ks_pvalue > 0.01
    assert abs(fit.mean - x.mean()) < 0.1 and abs(fit.std - x.std()) < 0.1
    # The other orientation on the mirrored data: the same numbers with the location negated.
    left = ds.gumbel_fit(-x, tail="left")
    assert left.loc == pytest.approx(-fit.loc, abs=1e-3) and left.scale == pytest.approx(fit.scale, abs=1e-3)
    # The wrong orientation fits badly, and the KS statistic says so.
    assert ds.gumbel_fit(-x, tail="right").ks_stat > 0.05


def test_gumbel_fit_rejects_degenerate_data():
    with pytest.raises(ValueError):
        ds.gumbel_fit([1.0, 1.0, 1.0])
    with pytest.raises(ValueError):
        ds.gumbel_fit([1.0, np.nan, 2.0, 3.0])
    with pytest.raises(ValueError):
        ds.gumbel_fit([1.0, 2.0, 3.0], tail="up")


def test_entropy_arithmetic_by_hand():
    # Three images of d = 50 dimensions with log p = -100, -200, -300 nats.
    e = ds.entropy_stats(np.array([-100.0, -200.0, -300.0]), 50)
    assert e.n == 3 and e.d == 50
    assert e.mean_logp_nats == pytest.approx(-200.0)
    assert e.mean_logp_db_per_dim == pytest.approx(10 * math.log10(math.exp(-4.0)))  # -4 nats/dim = -17.37 dB/dim
    assert e.entropy_nats_per_dim == pytest.approx(4.0)
    assert e.entropy_bits_per_dim == pytest.approx(4.0 * math.log2(math.e))  # 5.7708
    assert e.stderr_bits_per_dim == pytest.approx(100.0 / math.sqrt(3) / 50 * math.log2(math.e))
    assert e.discrete_bits_per_dim == pytest.approx(8 + 5.770780163555854)
    # 2^(50 * 13.7708) images = 10^(50 * 13.7708 * 0.30103) = 10^207.27
    assert e.log10_typical_count == pytest.approx(50 * 13.770780163555854 * 0.3010299956639812)
    assert e.log10_typical_count == pytest.approx(207.27, abs=0.01)
    # p_max / p_min = e^200 = 10^86.86
    assert e.log10_max_min_ratio == pytest.approx(86.858896, abs=1e-5)


def test_haar_participation_ratio_is_the_papers_by_hand():
    """(sum |c|)^2 / (N sum c^2) over all N = 16 coefficients of a 4x4 image (2 levels)."""
    const = np.full((1, 4, 4), 0.3)  # only the mean is non-zero: PR = 1/N
    zero = np.zeros((1, 4, 4))  # the limit of constant images
    delta = np.zeros((1, 4, 4))
    delta[0, 1, 2] = 1.0
    # Orthonormal: the delta has 3 details of magnitude 1/2 at level 1, 3 of 1/4 at level 2 and an
    # approximation of 1/4: sum |c| = 2.5, sum c^2 = 1 (Parseval), PR = 6.25 / 16.
    np.testing.assert_allclose(ds.haar_participation_ratio(np.concatenate([const, zero, delta]), "orthonormal"),
                               [1 / 16, 1 / 16, 6.25 / 16], rtol=1e-12)
    # The paper's (the notebook divides level j by 2^j): magnitudes 1/4 (x3), 1/16 (x3) and 1/16,
    # sum |c| = 1, sum c^2 = 52/256, PR = 256 / (52 * 16).
    np.testing.assert_allclose(ds.haar_participation_ratio(np.concatenate([const, zero, delta])),
                               [1 / 16, 1 / 16, 256 / 832], rtol=1e-12)
    # Contrast-invariant, not mean-invariant; channels pooled; orthonormal white noise gives 2/pi.
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(4, 3, 64, 64))
    np.testing.assert_allclose(ds.haar_participation_ratio(noise, "orthonormal"), 2 / np.pi, atol=0.01)
    pr = ds.haar_participation_ratio(noise)
    np.testing.assert_allclose(ds.haar_participation_ratio(7 * noise), pr, rtol=1e-9)
    assert (ds.haar_participation_ratio(5 + noise) < pr - 0.005).all()  # the mean is one more coefficient
    # Natural-image-like ordering: a flat image with one edge is sparser than uniform noise.
    edge = np.zeros((1, 64, 64))
    edge[0, :, 40:] = 1
    assert ds.haar_participation_ratio(edge)[0] < 0.05 < 0.3 < ds.haar_participation_ratio(rng.random((1, 64, 64)))[0]
    with pytest.raises(ValueError, match="scaling"):
        ds.haar_participation_ratio(noise, "l2")


def test_generalization_metrics_by_hand():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([1.5, 2.0, 2.5, 5.0])
    g = ds.generalization(a, b)
    # differences -0.5, 0, 0.5, -1
    assert g.n == 4
    assert g.mean_diff == pytest.approx(-0.25)
    assert g.rms_diff == pytest.approx(math.sqrt(0.375))
    # centred: a -1.5 -0.5 0.5 1.5; b -1.25 -0.75 -0.25 2.25; sum ab 5.5, sum aa 5, sum bb 7.25
    assert g.pearson == pytest.approx(5.5 / math.sqrt(5 * 7.25))
    same = ds.generalization(a, a + 0.0)
    assert same.pearson == pytest.approx(1.0) and same.rms_diff == 0 and same.mean_diff == 0
    with pytest.raises(ValueError):
        ds.generalization(a, b[:3])


def test_spearman_is_rank_based():
    x = np.arange(10.0)
    assert ds.spearman(x, np.exp(x))[0] == pytest.approx(1.0)
    assert ds.spearman(x, -x ** 3)[0] == pytest.approx(-1.0)


def test_gev_fit_recovers_a_known_frechet_type_law():
    # xi = 0.15 (scipy c = -0.15), at the paper's Gumbel location and scale (dB/dim).
    x = stats.genextreme.rvs(-0.15, loc=9.57, scale=3.17, size=20000, random_state=np.random.default_rng(1))
    fit = ds.gev_fit(x)
    assert fit.tail == "right" and fit.n == 20000
    assert abs(fit.xi - 0.15) < 0.03 and abs(fit.loc - 9.57) < 0.1 and abs(fit.scale - 3.17) < 0.1, fit
    assert fit.ks_stat < 0.015 and fit.as_dict()["xi"] == fit.xi
    # Its KS beats the Gumbel's on this heavy-tailed sample; on a Gumbel sample xi is about 0.
    assert fit.ks_stat < ds.gumbel_fit(x).ks_stat
    g = stats.gumbel_r.rvs(loc=9.57, scale=3.17, size=20000, random_state=np.random.default_rng(2))
    assert abs(ds.gev_fit(g).xi) < 0.03
    # Left orientation: the mirrored sample, the same shape and scale, the location negated.
    left = ds.gev_fit(-x, tail="left")
    assert left.shape_c == pytest.approx(fit.shape_c, abs=1e-3) and left.loc == pytest.approx(-fit.loc, abs=1e-2)
    grid = np.linspace(-30, 0, 7)
    np.testing.assert_allclose(left.pdf(grid), fit.pdf(-grid), rtol=1e-2, atol=1e-6)
    assert np.trapezoid(fit.pdf(np.linspace(-10, 200, 20001)), dx=210 / 20000) == pytest.approx(1, abs=1e-3)


def test_train_test_cross_entropy_by_hand():
    gap = ds.train_test_cross_entropy([3.0, 4.0, 5.0], [4.0, 6.0])
    assert gap.n_train == 3 and gap.n_test == 2
    assert gap.train_bpd == pytest.approx(4.0) and gap.test_bpd == pytest.approx(5.0)
    assert gap.train_stderr == pytest.approx(1 / math.sqrt(3))  # sample std 1 over sqrt(3)
    assert gap.test_stderr == pytest.approx(math.sqrt(2) / math.sqrt(2))  # sample std sqrt(2) over sqrt(2)
    assert gap.gap_bpd == pytest.approx(1.0) and gap.gap_stderr == pytest.approx(math.sqrt(1 / 3 + 1))
    with pytest.raises(ValueError, match="at least 2"):
        ds.train_test_cross_entropy([1.0], [1.0, 2.0])


def test_rows_evenly_spaced_in_value():
    v = np.array([5.0, 0.0, 10.0, 2.4, 7.6, 9.0])
    # targets 0, 2.5, 5, 7.5, 10 -> rows 1, 3, 0, 4, 2
    assert ds.rows_evenly_spaced_in_value(v, 5) == [1, 3, 0, 4, 2]
    assert ds.rows_evenly_spaced_in_value(v, 2) == [1, 2]
    assert ds.rows_evenly_spaced_in_value(v, 30)[0] == 1 and len(ds.rows_evenly_spaced_in_value(v, 30)) == 6
