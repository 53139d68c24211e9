"""`dsm import official` / `dsm export official`: the paper code's checkpoint layout.

The official files themselves are not on this machine (and tests never fetch anything), so
dsm writes a folder in the official layout, with the same keys, the same extra pickled
objects (classes of modules named `__main__`, `noise` and `networks.model`) and an
args.json, and reads it back.
"""

import json
import os
import sys
import types

import pytest
import torch

from dsm import api
from dsm.cli import main
from dsm.core.bundle import load_model
from dsm.official import export_official, key_map, official_key, read_args
from dsm.plumbing.config import load_config
from dsm.train import build
from dsm.train.config import TrainConfig

TINY = ["model.preset=paper", "model.unet.scales=2", "model.unet.base_width=4", "model.unet.convs_per_block=3",
        "noise.t_min=1e-9", "noise.t_max=1e3"]


def _model(tmp_path, kind="energy", channels=3, extra=()):
    cfg = load_config(TrainConfig, None, [f"data.path={tmp_path}", "scaling.workers=1", f"model.kind={kind}",
                                          *TINY, *extra])
    torch.manual_seed(0)
    model = build.build_model(cfg, build.DataShape((channels, 8, 8), True))
    with torch.no_grad():  # off the zero init of the output conv and gains
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return cfg, model


@pytest.fixture
def official_classes(monkeypatch):
    """Classes named like the official code's, in fake modules, so that torch.save pickles them by name."""
    made = {}
    package = types.ModuleType("networks")
    package.__path__ = []  # a package, so that `import networks.model` finds its child in sys.modules
    monkeypatch.setitem(sys.modules, "networks", package)
    for module, name in [("__main__", "PerformanceInfo"), ("noise", "NoiseLevel"), ("networks.model", "LogTensor")]:
        mod = sys.modules.get(module) or types.ModuleType(module)
        monkeypatch.setitem(sys.modules, module, mod)
        cls = type(name, (), {"__module__": module, "__qualname__": name})
        monkeypatch.setattr(mod, name, cls, raising=False)
        made[name] = cls
    return made


def _perf(classes):
    perf = classes["PerformanceInfo"]()
    perf.loss, perf.noise_levels = 0.41, classes["NoiseLevel"]()
    perf.noise_levels._variance = torch.logspace(-9, 3, 5)
    perf.cross_entropies = classes["LogTensor"]()
    return perf


def _import(src, out, capsys):
    code = main(["import", "official", str(src), "--out", str(out)])
    cap = capsys.readouterr()
    return code, cap.out.strip().splitlines(), cap.err.strip().splitlines()


def test_paper_keys_are_the_official_names():
    cfg = load_config(TrainConfig, None, ["data.path=x", "model.preset=paper"])
    with torch.device("meta"):
        model = build.build_model(cfg, build.DataShape((3, 64, 64), True))
    names = key_map(model)
    official = set(names.values())
    assert len(official) == len(names) == len(model.state_dict()) - 1  # every tensor but log_z
    assert "network.noise_var_embedding.time_embed.2.bias" in official
    assert names["backbone.encoder.1.0.conv.weight"] == "network.encoder.1.0.weight"
    assert names["backbone.encoder.1.0.norm.cond.weight"] == "network.encoder.1.1.conditioning_embedding.weight"
    assert names["backbone.middle.2.conv.weight"] == "network.middle_block.6.weight"
    assert names["backbone.decoder.0.2.conv.weight"] == "network.decoder.2.6.weight"  # runs first: scale 2
    assert names["backbone.out.weight"] == "network.decoder.0.6.weight"
    assert tuple(model.state_dict()["backbone.out.weight"].shape) == (3, 64, 3, 3)
    assert "network.decoder.0.7.weight" not in official and official_key("log_z", 3, 3) is None


@pytest.mark.parametrize("kind,channels", [("energy", 3), ("energy", 1), ("score", 3)])
def test_roundtrip_through_the_official_layout(tmp_path, capsys, official_classes, kind, channels):
    cfg, model = _model(tmp_path, kind, channels)
    folder = export_official(model, cfg, (channels, 8, 8), tmp_path / "official", step=1000,
                             extra={"train_perf": _perf(official_classes), "test_perf": _perf(official_classes)})
    args = json.loads((folder / "args.json").read_text())
    assert args["model"] == ("EnergyModel" if kind == "energy" else "DenoiserModel")
    assert args["grayscale"] == (channels == 1) and args["min_noise_level"] == {"x": 90.0, "unit": "psnr"}
    code, out, err = _import(folder, tmp_path / "imported.pt", capsys)
    assert code == 0, err
    assert out[-1] == str(tmp_path / "imported.pt") and "dsm normalize" in out[0]
    b = load_model(out[-1])
    assert b.model_config.kind == kind and b.model_config.preset == "paper" and b.meta["step"] == 1000
    assert b.normalization is None and b.shape == (channels, 8, 8)
    y = torch.rand(5, channels, 8, 8)
    t = torch.tensor([0.0, 1e-9, 1e-3, 1.0, 1e3])
    if kind == "energy":
        m = api.load(out[-1])
        torch.testing.assert_close(m.energy(y, t), model.energy(y, t), rtol=0, atol=0)
        s_new, s_old = b.model.scores(y, t), model.scores(y, t)
        torch.testing.assert_close(s_new.grad_y, s_old.grad_y, rtol=0, atol=0)
        torch.testing.assert_close(s_new.grad_t, s_old.grad_t, rtol=0, atol=0)
        torch.testing.assert_close(m.denoise(y, t), model.denoise(y, t), rtol=0, atol=0)
    else:
        with torch.no_grad():
            torch.testing.assert_close(b.model.denoise(y, t), model.denoise(y, t), rtol=0, atol=0)


@pytest.mark.parametrize("payload", ["os", "eval"])
def test_a_malicious_pickle_is_refused_and_nothing_runs(tmp_path, capsys, payload):
    cfg, model = _model(tmp_path)
    folder = export_official(model, cfg, (3, 8, 8), tmp_path / "official")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            if payload == "os":
                return os.system, (f"touch {marker}",)
            return eval, (f"open({str(marker)!r}, 'w').close()",)

    blob = torch.load(folder / "model.pth.tar", weights_only=False)  # our own file, just written
    blob["test_perf"] = Evil()
    torch.save(blob, folder / "model.pth.tar")
    code, out, err = _import(folder, tmp_path / "m.pt", capsys)
    assert code == 2 and len(err) == 1 and "refused" in err[0] and "model.pth.tar" in err[0], err
    assert "weights_only" not in err[0]  # never points at the unsafe option
    assert not marker.exists() and not (tmp_path / "m.pt").exists()


def _break(folder, what):
    blob = torch.load(folder / "model.pth.tar", weights_only=False)
    state = blob["state_dict"]
    if what == "missing":
        del state["network.middle_block.3.weight"]
    elif what == "unexpected":
        state["network.decoder.0.7.weight"] = torch.zeros(1)
    elif what == "shape":
        state["network.encoder.0.0.weight"] = torch.zeros(4, 3, 5, 5)
    torch.save(blob, folder / "model.pth.tar")


def _edit_args(folder, **changes):
    args = json.loads((folder / "args.json").read_text())
    args.update(changes)
    (folder / "args.json").write_text(json.dumps(args))


@pytest.mark.parametrize("case,message", [
    ("missing", "missing key network.middle_block.3.weight"),
    ("unexpected", "unexpected key network.decoder.0.7.weight"),
    ("shape", "network.encoder.0.0.weight has shape (4, 3, 5, 5)"),
    ("network", "unsupported network 'DnCNN'"),
    ("reparam", "unsupported model 'EnergyModel' with reparam_kwargs"),
    ("kwargs", "unsupported network_kwargs attention"),
    ("embedding", "unsupported embed_noise_level_in_range"),
    ("eval", "network_kwargs is not a Python dict literal"),
    ("not-a-checkpoint", "not a checkpoint"),
    ("no-args", "args.json: no such file"),
])
def test_bad_folders_get_one_line_and_exit_2(tmp_path, capsys, case, message):
    cfg, model = _model(tmp_path)
    folder = export_official(model, cfg, (3, 8, 8), tmp_path / "official")
    if case in ("missing", "unexpected", "shape"):
        _break(folder, case)
    elif case == "network":
        _edit_args(folder, network="DnCNN")
    elif case == "reparam":
        _edit_args(folder, reparam_kwargs="{'conversion':'squared_norm'}")
    elif case == "kwargs":
        _edit_args(folder, network_kwargs="{'num_scales':2,'attention':True}")
    elif case == "embedding":
        _edit_args(folder, embed_noise_level_in_range=True)
    elif case == "eval":
        _edit_args(folder, network_kwargs="__import__('os').system('true')")
    elif case == "not-a-checkpoint":
        (folder / "model.pth.tar").write_bytes(b"\x00" * 100)
    elif case == "no-args":
        (folder / "args.json").unlink()
    code, out, err = _import(folder, tmp_path / "m.pt", capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "m.pt").exists()


def test_released_args_are_read(tmp_path):
    """The released colour energy's args.json, as published, maps onto the `paper` preset."""
    released = {
        "name": "finalclean_imagenet64_color_lr0.0005_1Msteps10decays", "dataset": "ImageNet64", "grayscale": False,
        "horizontal_flip": True, "spatial_size": None, "noise_sampler": "WhiteGaussianSampler()",
        "noise_covariance": None, "noise_level_sampler": "UniformLog", "min_noise_level": {"x": 90.0, "unit": "psnr"},
        "max_noise_level": {"x": -30.0, "unit": "psnr"}, "embed_noise_level_in_range": False, "model": "EnergyModel",
        "model_kwargs": "dict()", "network": "UNet",
        "network_kwargs": "{'num_scales':3,'group_size':1,'num_layers_encoder_block':3,'num_layers_mid_block':3,"
                          "'num_layers_decoder_block':3}",
        "reparam_kwargs": "{'conversion':'inner_product'}", "train_noise_score": 1.0, "train_batch_size": 128,
        "num_training_steps": 1000000, "lr": 0.0005, "lr_decay_every": 100000}
    (tmp_path / "args.json").write_text(json.dumps(released))
    spec = read_args(tmp_path / "args.json")
    assert (spec.kind, spec.channels, spec.image_size, spec.scales, spec.convs_per_block, spec.group_size) == \
        ("energy", 3, 64, 3, 3, 1)
    assert spec.t_min == pytest.approx(1e-9, rel=1e-12) and spec.t_max == pytest.approx(1e3, rel=1e-12)
    from dsm.core.nets.unet import count_parameters
    from dsm.official import train_config

    with torch.device("meta"):
        model = build.build_model(train_config(spec), build.DataShape((3, 64, 64), True))
    assert count_parameters(model) == 8_649_856


def test_only_the_paper_function_is_exported(tmp_path):
    cfg, model = _model(tmp_path, extra=["model.unet.norm_eps=relative"])
    with pytest.raises(ValueError, match="only the `paper` UNet preset"):
        export_official(model, cfg, (3, 8, 8), tmp_path / "o")
