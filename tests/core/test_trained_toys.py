"""End-to-end accuracy of the core on exact densities: train, normalize, compare.

These train MLP energies on the CPU (about a minute each), so they are marked slow; CI runs
them. Numbers they produced are in docs/toys.md.
"""

import math

import pytest
import torch

from dsm.core import deff, losses, models, noise, normalize, ode, toy
from dsm.core.fit import fit

pytestmark = pytest.mark.slow

T_MIN, T_MAX = 1e-4, 1e3


def _train(mix, *, steps, form="inner+c", tsm_weight=1.0, batch_size=512, sigma_data=None, seed=0):
    torch.manual_seed(seed)
    heldout = mix.sample(4000, torch.Generator().manual_seed(seed + 100))
    sd = sigma_data or float(heldout.std())
    model = models.mlp_energy(mix.dim, form=form, t_min=T_MIN, t_max=T_MAX, sigma_data=sd)
    res = fit(model, losses.DualScoreMatching(tsm_weight=tsm_weight), lambda n, g: mix.sample(n, g),
              noise.make_t_sampler("log_uniform", T_MIN, T_MAX), steps=steps, batch_size=batch_size,
              lr=1e-3, seed=seed, progress=False)
    assert res.skipped == 0
    log_z = normalize.normalize(res.model, heldout, T_MAX)
    return res.model, heldout, log_z


@pytest.fixture(scope="module", params=[2, 16], ids=["2d", "16d"])
def trained(request):
    d = request.param
    mix = toy.anisotropic_mixture(d, n_components=4, seed=0)
    model, heldout, log_z = _train(mix, steps=1500)
    test = mix.sample(2000, torch.Generator().manual_seed(12))
    return mix, model, heldout, log_z, test


def test_log_prob_within_0p1_nats_per_dim(trained):
    mix, model, _, log_z, x = trained
    err = (model.log_prob(x) - mix.log_prob(x).double()) / mix.dim
    print(f"d={mix.dim}: mean |error| {err.abs().mean():.4f} nats/dim, bias {err.mean():+.4f}, "
          f"log Z {log_z.value:.4f} +- {log_z.stderr:.4f}")
    assert log_z.stderr < 0.01
    assert err.abs().mean() <= 0.1


def test_pf_ode_agrees_with_the_energy(trained):
    """The ODE uses only grad_y U; the energy uses U(x, 0) and log Z (hence TSM).

    On exact densities the ODE is within its own error bar (tests/core/test_ode.py). On a trained
    model the two also differ by the model's self-inconsistency (the spatial and time scores
    do not describe exactly the same density), measured at 0.04-0.07 nats/dim here. That gap
    dwarfs the ODE's numerical error (< 0.005 nats/dim at these settings), so it is held to
    the same 0.1 nats/dim as the model itself, and the ODE must land as close to the exact
    log p as the energy does.
    """
    mix, model, heldout, _, x = trained
    xo = x[:24]
    r = ode.ode_log_prob(model, xo, prior=normalize.DataMoments.of(heldout), t_start=T_MIN / 10,
                         t_end=T_MAX, steps=96, trace="exact")
    d = mix.dim
    gap = (r.log_prob - model.log_prob(xo)) / d
    ode_err = ((r.log_prob - mix.log_prob(xo).double()) / d).abs().mean()
    energy_err = ((model.log_prob(xo) - mix.log_prob(xo).double()) / d).abs().mean()
    print(f"d={d}: |ODE - energy| {gap.abs().mean():.4f}, |ODE - exact| {ode_err:.4f}, "
          f"|energy - exact| {energy_err:.4f} nats/dim, {r.nfe} drift evaluations")
    assert gap.abs().mean() <= 0.1
    assert ode_err <= 0.1


def test_d_eff_estimators_agree_on_a_trained_model(trained):
    mix, model, _, _, x = trained
    for t in (1e-3, 1e-1, 10.0):
        est = deff.d_eff(model, x[:500], t, n_noise=8)
        gap = est.denoising - est.time
        se = gap.std().item() / math.sqrt(len(gap))
        print(f"d={mix.dim} t={t:g}: d_eff {est.denoising.mean():.3f} vs {est.time.mean():.3f}, gap "
              f"{gap.mean():+.4f} +- {se:.4f}")
        assert abs(gap.mean().item()) <= 4 * se + 0.01 * mix.dim
        assert 0 < est.denoising.mean() <= mix.dim * 1.05


def test_scale_mixture_dual_beats_single_score_matching():
    """The paper's Figure 1: 1/2 N(0, I) + 1/2 N(0, 16 I), here in d = 100.

    Dual SM's cross-entropy must be within 2% of the exact entropy; single SM (lambda = 0)
    cannot pin the t-dependence of the normalizer and misses by far more.
    """
    d = 100
    mix = toy.scale_mixture(d)
    h, h_se = mix.entropy_mc(100_000, torch.Generator().manual_seed(3))
    x = mix.sample(4000, torch.Generator().manual_seed(4))
    out = {}
    for lam in (1.0, 0.0):
        # 600 steps (was 1000): dual misses by 0.21% (seed 0) / 0.29% (seed 1), single by 122% / 116%;
        # at 400 dual already missed by 1.3%, at 250 by 2.5%: the 2% bound still separates trained from not.
        model, _, _ = _train(mix, steps=600, form="scalar", tsm_weight=lam, batch_size=256,
                             sigma_data=math.sqrt(8.5))
        out[lam] = float(-model.log_prob(x).mean())
    rel = {lam: abs(ce - h) / h for lam, ce in out.items()}
    print(f"entropy {h / d:.4f} nats/dim; dual {out[1.0] / d:.4f} ({rel[1.0]:.2%}), "
          f"single {out[0.0] / d:.4f} ({rel[0.0]:.2%})")
    assert rel[1.0] < 0.02
    assert rel[0.0] > 0.2 and rel[0.0] > 10 * rel[1.0]
