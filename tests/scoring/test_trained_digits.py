"""A UNet energy trained on digits, through `dsm normalize` and `dsm score` (slow).

The PF-ODE cross-check needs a model trained long enough for its dU/dt to agree with its
spatial score: after 1200 steps (batch 128, lr 1e-3) the two disagree by 0.6 nats/dim, after
8000 such steps with a weight EMA 0.999 by about 0.05, and as well after 4000 steps at lr 3e-3
with EMA 0.998, the recipe here, in half the time (benchmarks/score_vs_ode.py; docs/scoring.md;
docs/testing.md).
"""

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import dsm.api
from dsm.bundle import save_bundle
from dsm.cli import main
from dsm.config import load_config
from dsm.data.inputs import iter_examples, open_input
from dsm.fit import fit
from dsm.normalize import DataMoments
from dsm.ode import ode_log_prob
from dsm.scoring.columns import ScoreSpec
from dsm.scoring.job import read_scores, score
from dsm.train import build
from dsm.train.config import TrainConfig

pytestmark = pytest.mark.slow


# One model for both tests (they only read it; each normalizes its own copy). Against the
# earlier 8000 steps at lr 1e-3 with EMA 0.999, a larger learning rate and a shorter EMA reach
# the same consistency in half the steps (docs/testing.md has the search).
RECIPE = dict(steps=4000, batch_size=128, lr=3e-3, ema_decay=0.998)


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    """The digits-smoke UNet energy trained in-process once (seeded): (cfg, bundle, not normalized)."""
    tmp = tmp_path_factory.mktemp("trained-digits")
    cfg = build.resolve_data(load_config(TrainConfig, "configs/digits-smoke.yaml"), tmp / "ws", progress=False)
    train = torch.cat([torch.from_numpy(x) for _, x, _ in iter_examples(open_input(cfg.data.path))])
    # One thread, as in the recipe search: the float rounding, and with it each image's gap (by
    # up to 0.3 nats/dim), depends on the thread count; this way the test trains the model that
    # the search measured on this kind of machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build.build_model(cfg, build.DataShape((1, 8, 8), True))
        model = fit(model, build.build_loss(cfg),
                    lambda n, g: train[torch.randint(0, len(train), (n,), generator=g)],
                    build.build_sampler(cfg), progress=False, **RECIPE).model
    finally:
        torch.set_num_threads(threads)
    return cfg, save_bundle(tmp / "model.pt", model, cfg, (1, 8, 8), True)


def _own_copy(trained_digits, tmp_path):
    """(cfg, path) of this test's copy of the shared bundle, which the test may normalize."""
    cfg, bundle = trained_digits
    return cfg, Path(shutil.copy(bundle, tmp_path / "model.pt"))


def test_trained_model_through_normalize_and_score(ray_cluster, trained_digits, tmp_path, capsys):
    cfg, path = _own_copy(trained_digits, tmp_path)  # not normalized yet

    assert main(["score", str(path), "--data", cfg.data.eval_path, "--out", str(tmp_path / "s")]) == 2
    assert "dsm normalize" in capsys.readouterr().err
    assert main(["normalize", str(path), "--data", cfg.data.eval_path, "--workspace", str(tmp_path / "ws")]) == 0
    out = capsys.readouterr().out
    assert "log Z =" in out and "agreement across t" in out

    m = dsm.api.load(path)
    rec = m.meta["normalization"]
    assert rec["n"] == 359 and rec["t"] == cfg.noise.t_max and rec["stderr"] > 0
    assert m.log_z == pytest.approx(rec["value"])
    score(str(path), cfg.data.eval_path, tmp_path / "s", ScoreSpec(t_grid=(0.01,), n_noise=2), actors=2)
    table = read_scores(tmp_path / "s").to_pandas().set_index("key")
    keys, x, labels = next(iter_examples(open_input(cfg.data.eval_path), 8))
    x = torch.from_numpy(x)
    np.testing.assert_allclose(table.loc[keys, "logp_nats"].to_numpy(), m.log_prob(x).numpy(), rtol=1e-6)
    np.testing.assert_allclose(table.loc[keys, "nll_bpd"].to_numpy(), m.nll(x).numpy(), rtol=1e-6)
    assert (table.loc[keys, "label"].to_numpy() == labels).all()
    assert math.isfinite(table["nll_bpd"].mean())


def test_score_matches_the_pf_ode_on_a_trained_model(ray_cluster, trained_digits, tmp_path, capsys):
    """log p from `dsm score` against the PF-ODE (spatial score only, no log Z) on held-out digits.

    The model is floored at t_min (U(x, 0) = U(x, t_min)), so both sides are compared at
    t_min: the ODE runs from t_min to t_max without its first-order [0, t_min] stretch. The
    tolerance is the model's own consistency (the integrated heat-equation residual), which is
    what training reduces; the numerical errors (log Z's standard error, Heun at 48 steps) are
    two orders of magnitude smaller. A 1200-step model fails this (a 0.6 nats/dim gap).
    """
    cfg, path = _own_copy(trained_digits, tmp_path)
    assert main(["normalize", str(path), "--data", cfg.data.eval_path, "--workspace", str(tmp_path / "ws")]) == 0
    score(str(path), cfg.data.eval_path, tmp_path / "s", ScoreSpec(t_grid=(0.01,), n_noise=2), actors=1)
    table = read_scores(tmp_path / "s").to_pandas().set_index("key")
    capsys.readouterr()

    m = dsm.api.load(path)
    held = torch.cat([torch.from_numpy(x) for _, x, _ in iter_examples(open_input(cfg.data.eval_path))])
    keys, x, _ = next(iter_examples(open_input(cfg.data.eval_path), 6))
    x = torch.from_numpy(x)
    t_min, d = cfg.noise.t_min, x[0].numel()
    tt = torch.full((len(x),), t_min)
    with torch.no_grad():  # the floor: log p(x) is the density at t_min
        torch.testing.assert_close(m.energy_model.energy(x, torch.zeros(len(x))), m.energy_model.energy(x, tt))
    ode = ode_log_prob(m.energy_model, x, prior=DataMoments.of(held), t_start=t_min, t_end=cfg.noise.t_max,
                       steps=48, to_zero=False)
    gap = (torch.from_numpy(table.loc[keys, "logp_nats"].to_numpy().copy()) - ode.log_prob) / d  # nats/dim
    print("energy - ODE, nats/dim:", [round(float(v), 3) for v in gap])
    assert m.meta["normalization"]["stderr"] / d < 1e-3  # log Z's error is not what the tolerance covers
    assert abs(float(gap.mean())) < 0.1, gap
    # The single worst image varies with the machine: float rounding in the CPU's kernels
    # changes the trained model over thousands of steps. With the earlier recipe (8000 steps of
    # batch 128) the worst |gap| was 0.27 nats/dim on one machine and 0.55 on another; with this
    # one, 0.12 (mean -0.005). The mean above is the model's consistency; this bound catches a
    # single image gone wrong.
    assert float(gap.abs().max()) < 0.8, gap
