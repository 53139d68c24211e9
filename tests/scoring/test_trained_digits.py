"""A UNet energy trained on digits, through `dsm normalize` and `dsm score` (slow).

The PF-ODE comparison the scoring issue asks for is measured, not asserted, by
benchmarks/score_vs_ode.py: after 1200 steps the energy and the ODE still disagree by
0.1-1 nats/dim on digits (docs/scoring.md), which is a finding about the model, not a
property of the pipeline that a test can pin down yet.
"""

import math

import numpy as np
import pytest
import torch

import dsm.api
from dsm import losses
from dsm.bundle import save_bundle
from dsm.cli import main
from dsm.config import load_config
from dsm.fit import fit
from dsm.scoring.columns import ScoreSpec
from dsm.scoring.inputs import iter_examples, open_input
from dsm.scoring.job import read_scores, score
from dsm.train import build
from dsm.train.config import TrainConfig

pytestmark = pytest.mark.slow


def test_trained_model_through_normalize_and_score(ray_cluster, tmp_path, capsys):
    cfg = build.resolve_data(load_config(TrainConfig, "configs/digits-smoke.yaml"), tmp_path / "ws", progress=False)
    train = torch.cat([torch.from_numpy(x) for _, x, _ in iter_examples(open_input(cfg.data.path))])
    torch.manual_seed(0)
    model = build.build_model(cfg, build.DataShape((1, 8, 8), True))
    fit(model, losses.DualScoreMatching(), lambda n, g: train[torch.randint(0, len(train), (n,), generator=g)],
        build.build_sampler(cfg), steps=600, batch_size=128, lr=1e-3, progress=False)
    path = save_bundle(tmp_path / "model.pt", model, cfg, (1, 8, 8), True)  # not normalized yet

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
