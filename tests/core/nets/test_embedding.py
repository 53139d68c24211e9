import pytest
import torch

from dsm.core.nets.embedding import make_time_embedding


def test_log_embedding_floors_at_t_min_and_resolves_the_range():
    emb = make_time_embedding("log", 1e-9, 1e3, n_freq=8)
    t = torch.tensor([0.0, 1e-12, 1e-9, 1e-6, 1e-3, 1.0, 1e3])
    f = emb(t)
    assert f.shape == (7, emb.n_features) == (7, 17)
    assert torch.equal(f[0], f[2]) and torch.equal(f[1], f[2])  # defined at and below t_min
    assert f[2, 0].item() == pytest.approx(-1.0) and f[-1, 0].item() == pytest.approx(1.0)
    # every decade in the training range maps to clearly different features
    dists = (f[3:] - f[2:-1]).norm(dim=1)
    assert (dists > 0.3).all()


def test_linear_embedding_is_blind_at_small_t():
    # the paper's embedding of t itself barely changes between 1e-9 and 1e-4 (docs/design.md section 3)
    emb = make_time_embedding("linear", 1e-9, 1e3)
    f = emb(torch.tensor([1e-9, 1e-4, 1.0]))
    assert (f[0] - f[1]).norm() < 1e-3 < (f[1] - f[2]).norm()


def test_unknown_embedding():
    with pytest.raises(ValueError, match="unknown time embedding 'fourier'"):
        make_time_embedding("fourier", 1e-3, 1.0)
    with pytest.raises(ValueError, match="t_min < t_max"):
        make_time_embedding("log", 1.0, 1e-3)
