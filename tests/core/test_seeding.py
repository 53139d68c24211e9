import torch

from dsm.core.seeding import key_seed, keyed_normal, keyed_rademacher


def test_key_seed_is_stable_and_salted():
    assert key_seed("img_00042") == key_seed("img_00042")
    assert key_seed("img_00042") != key_seed("img_00043")
    assert key_seed(7, salt="a") != key_seed(7, salt="b")
    assert 0 <= key_seed(123) < 2**63
    # pinned: a seed must never change across releases, or scores would silently change
    assert key_seed(0) == key_seed("0")


def test_keyed_noise_does_not_depend_on_batch_layout():
    keys = ["a", "b", "c", "d"]
    full = keyed_normal(keys, (3, 2), salt="s")
    assert torch.equal(keyed_normal(keys[2:], (3, 2), salt="s"), full[2:])
    assert torch.equal(keyed_normal(keys[::-1], (3, 2), salt="s"), full.flip(0))
    assert not torch.equal(full[0], full[1])
    r = keyed_rademacher(keys, (100,))
    assert set(r.unique().tolist()) == {-1.0, 1.0}


def test_keyed_uniform_is_per_key_and_in_range():
    from dsm.core.seeding import keyed_uniform

    a = keyed_uniform(["x", "y", "z"], (4,), salt="s")
    b = keyed_uniform(["z"], (4,), salt="s")
    assert a.shape == (3, 4) and bool(((a >= 0) & (a < 1)).all())
    assert torch.equal(a[2], b[0]) and not torch.equal(a[0], a[1])
