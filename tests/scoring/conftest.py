"""Data and models for the scoring tests: an exact Gaussian (log p in closed form) and bundles."""

import functools

import numpy as np
import pytest
import torch

import dsm.api
from dsm.core import toy


def make_gaussian(d: int = 5, seed: int = 0) -> toy.Gaussian:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.4
    return toy.Gaussian(torch.rand(d, generator=g, dtype=torch.float64),
                        a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64))


@pytest.fixture(scope="session")
def gaussian():
    return make_gaussian()


@pytest.fixture(scope="session")
def gaussian_ref(gaussian):
    """A picklable model reference for Ray actors: the exact energy standing in for a trained model."""
    return functools.partial(dsm.api.from_energy, gaussian)


@pytest.fixture(scope="session")
def gaussian_npy(gaussian, tmp_path_factory):
    path = tmp_path_factory.mktemp("gauss") / "x.npy"
    np.save(path, gaussian.sample(2500, torch.Generator().manual_seed(1)).float().numpy())
    return path
