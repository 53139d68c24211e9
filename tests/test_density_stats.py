"""dsm.density_stats against known laws and hand-computed numbers."""

import math

import numpy as np
import pytest
from scipy import stats

from dsm import density_stats as ds


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


def test_haar_participation_ratio_by_hand():
    imgs = np.array([
        [[1.0, 1.0], [0.0, 0.0]],  # one horizontal detail coefficient: PR = 1/N = 1/3
        [[1.0, 0.0], [0.0, 0.0]],  # three details of equal magnitude 1/2: PR = 1
        [[0.7, 0.7], [0.7, 0.7]],  # no detail energy: PR = 0 by convention
    ])
    np.testing.assert_allclose(ds.haar_participation_ratio(imgs), [1 / 3, 1.0, 0.0], atol=1e-12)
    # Invariant to mean and contrast; channels pooled; white noise gives about 1/3 (E c^4 = 3 sigma^4).
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(4, 3, 64, 64))
    pr = ds.haar_participation_ratio(noise)
    np.testing.assert_allclose(pr, 1 / 3, atol=0.03)
    np.testing.assert_allclose(ds.haar_participation_ratio(5 + 0.1 * noise), pr, rtol=1e-9)
    # A sparse image (one bright pixel on black) is far sparser than noise.
    spot = np.zeros((1, 1, 16, 16))
    spot[0, 0, 5, 9] = 1
    assert ds.haar_participation_ratio(spot)[0] < 0.1


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
