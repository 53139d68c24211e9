"""A real `dsm score` output for the report tests, made without Ray: the job's own actor class
scores every piece in-process, then `score()` (nothing left pending, so Ray never starts)
checks the parts and writes scores.json, exactly as the Ray job would."""

import functools

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import dsm.api
from dsm.api import resolve
from dsm.core import toy
from dsm.data.inputs import open_input
from dsm.scoring.columns import ScoreSpec
from dsm.scoring.job import PieceScorer, job_options, prepare_out, score

SHAPE = (1, 8, 8)
T_GRID = (1e-3, 1e-2, 1e-1, 1.0)
LABEL = "exact-gaussian-fit-to-digits"


def digits_gaussian(x: np.ndarray) -> toy.Gaussian:
    """The maximum-likelihood Gaussian of images x (n, 1, 8, 8) in [0, 1], regularized (corner
    pixels are constant)."""
    flat = torch.from_numpy(x.reshape(len(x), -1)).double()
    cov = torch.cov(flat.T) + 1e-3 * torch.eye(flat.shape[1], dtype=torch.float64)
    return toy.Gaussian(flat.mean(0), cov)


def score_without_ray(model_ref, data, out, spec: ScoreSpec) -> dict:
    inp = open_input(data, piece_size=1000)
    pending = prepare_out(out, job_options(model_ref, resolve(model_ref), inp, spec, LABEL))
    scorer = PieceScorer(model_ref, str(data), str(out), spec)
    for i in pending:
        scorer.score_piece(i)
    return score(model_ref, data, out, spec, model_label=LABEL)


@pytest.fixture(scope="session")
def digits_scores(tmp_path_factory):
    """(scores folder, .npy of the 1200 scored 8-bit digit images, the exact model)."""
    root = tmp_path_factory.mktemp("report")
    imgs = np.round(load_digits().images[:1200] / 16 * 255).astype(np.uint8)[:, None]  # (1200, 1, 8, 8)
    data = root / "digits.npy"
    np.save(data, imgs)
    gauss = digits_gaussian(imgs.astype(np.float32) / 255)
    ref = functools.partial(dsm.api.Model, gauss, SHAPE, eight_bit=True, normalized=True)
    out = root / "scores"
    score_without_ray(ref, data, out, ScoreSpec(t_grid=T_GRID, n_noise=2, batch_size=400))
    return out, data, gauss
