"""The exported model file: one file rebuilds the model, its log Z and its config."""

import pytest
import torch

from dsm.core.bundle import load_model, save_bundle
from dsm.plumbing.config import load_config
from dsm.train import build
from dsm.train.config import TrainConfig


def test_roundtrip_and_errors(tmp_path):
    x = tmp_path / "x.npy"
    import numpy as np

    np.save(x, np.zeros((4, 3), np.float32))
    cfg = load_config(TrainConfig, "configs/vectors.yaml", [f"data.path={x}", f"data.eval_path={x}"])
    model = build.build_model(cfg, build.DataShape((3,), False))
    model.log_z.fill_(1.25)
    path = save_bundle(tmp_path / "m" / "model.pt", model, cfg, (3,), False,
                       normalization={"value": 1.25}, meta={"step": 7})
    b = load_model(path)
    assert b.config == cfg.model_dump(mode="json") and b.shape == (3,) and not b.is_image and b.meta == {"step": 7}
    y = torch.randn(5, 3)
    torch.testing.assert_close(b.model.log_prob(y), model.log_prob(y))
    assert not list(path.parent.glob(".*tmp"))  # atomic write left no temporary file

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.pt"):
        load_model(bad)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")


def test_version_1_paper_bundles_load_as_paper_dsm(tmp_path):
    """dsm <= 0.13 called its own variant `paper`; such a bundle must rebuild that same function."""
    cfg = load_config(TrainConfig, None, [f"data.path={tmp_path}", "model.preset=paper-dsm", "model.unet.scales=1",
                                          "model.unet.base_width=4"])
    model = build.build_model(cfg, build.DataShape((1, 8, 8), True))
    path = save_bundle(tmp_path / "new.pt", model, cfg, (1, 8, 8), True)
    blob = torch.load(path, weights_only=True)
    blob["version"] = 1
    blob["config"]["model"]["preset"] = "paper"
    for k in ("additive_normalization",):
        blob["config"]["model"].pop(k)
    for k in ("norm_eps", "time_mlp"):
        blob["config"]["model"]["unet"].pop(k)
    torch.save(blob, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt")
    assert old.model_config.preset == "paper-dsm"
    y, t = torch.rand(3, 1, 8, 8), torch.tensor([1e-9, 0.1, 10.0])
    torch.testing.assert_close(old.model.energy(y, t), model.energy(y, t), rtol=0, atol=0)


def test_the_nll_convention_is_the_one_training_decided(tmp_path):
    """A bundle records whether its model was trained on 8-bit images; dsm.api reports the NLL in
    that convention. An image model trained on float images is not 8-bit; a bundle from before the
    record reads as its is_image."""
    import dsm.api

    cfg = load_config(TrainConfig, None, [f"data.path={tmp_path}", "model.unet.scales=1", "model.unet.base_width=4"])
    model = build.build_model(cfg, build.DataShape((1, 8, 8), True))
    floats = save_bundle(tmp_path / "floats.pt", model, cfg, (1, 8, 8), True, eight_bit=False)
    eight = save_bundle(tmp_path / "eight.pt", model, cfg, (1, 8, 8), True, eight_bit=True)
    assert not load_model(floats).eight_bit and load_model(eight).eight_bit
    assert not dsm.api.load(floats).eight_bit and dsm.api.load(eight).eight_bit
    blob = torch.load(floats, weights_only=True)
    del blob["eight_bit"]
    torch.save(blob, tmp_path / "older.pt")
    assert load_model(tmp_path / "older.pt").eight_bit  # is_image, as before the record existed
