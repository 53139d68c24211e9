"""Converters on small files in the exact formats: official ImageNet64 batches (pickle and .npz), folders."""

import pickle
import warnings

import numpy as np
import pytest
from PIL import Image

from dsm.data.convert import convert_folder, convert_imagenet64, read_imagenet_batch
from dsm.data.shards import Manifest, ShardSource, iter_shard
from dsm.plumbing.config import ConfigError


def _batch(rng, n, side=64):
    """A batch dict as in the official files: 'data' uint8 (N, 3*side*side) planar CHW, 'labels' 1..1000."""
    data = rng.integers(0, 256, (n, 3 * side * side), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(1, 1001, n)]
    return {"data": data, "labels": labels, "mean": data.mean(0)}


def _write_pickle(path, d):
    with open(path, "wb") as f:
        pickle.dump(d, f)


def _read(folder):
    m = Manifest.load(folder)
    out = {}
    for info in m.shards:
        for s in iter_shard(folder / info.file, expected_samples=info.samples, shape=m.shape, with_meta=True):
            out[s.meta["source_id"]] = (s.image, s.label)
    return m, out


def test_imagenet64_pickles_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    batches = {"train_data_batch_1": _batch(rng, 7), "train_data_batch_2": _batch(rng, 5),
               "val_data": _batch(rng, 4)}
    batches["val_data"].pop("mean")  # val_data has no mean in the official files
    for name, d in batches.items():
        _write_pickle(src / name, d)
    ms = convert_imagenet64(src, tmp_path / "out", shard_size=4, progress=False)
    assert ms["train"].num_samples == 12 and ms["val"].num_samples == 4 and ms["train"].shape == (3, 64, 64)
    assert ms["train"].options["files"] == ["train_data_batch_1", "train_data_batch_2"]
    for split in ("train", "val"):
        _, got = _read(tmp_path / "out" / split)
        for name, d in batches.items():
            if (split == "val") != (name == "val_data"):
                continue
            for i in range(len(d["labels"])):
                img, label = got[f"{name}:{i}"]
                chw = d["data"][i].reshape(3, 64, 64)
                np.testing.assert_array_equal(img.transpose(2, 0, 1), chw)  # pixel for pixel
                assert label == d["labels"][i] - 1


def test_imagenet64_npz_downsampled_and_gray(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    src.mkdir()
    d = _batch(rng, 6)
    np.savez(src / "val_data.npz", data=d["data"], labels=np.array(d["labels"]))
    ms = convert_imagenet64(src, tmp_path / "out", size=32, progress=False)
    assert list(ms) == ["val"] and ms["val"].shape == (3, 32, 32)
    _, got = _read(tmp_path / "out" / "val")
    hwc = d["data"][2].reshape(3, 64, 64).transpose(1, 2, 0).astype(np.float32)
    expect = np.rint(hwc.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))).astype(np.uint8)
    np.testing.assert_array_equal(got["val_data.npz:2"][0], expect)
    ms = convert_imagenet64(src, tmp_path / "gray", gray=True, progress=False)
    assert ms["val"].shape == (1, 64, 64)


def test_imagenet32_is_recognised_by_row_length(tmp_path):
    d = _batch(np.random.default_rng(2), 3, side=32)
    _write_pickle(tmp_path / "val_data", d)
    images, labels, side = read_imagenet_batch(tmp_path / "val_data")
    assert side == 32 and images.shape == (3, 32, 32, 3)


@pytest.mark.parametrize("bad, message", [
    ({"data": np.zeros((2, 12288), np.float32), "labels": [1, 2]}, "'data' must be uint8"),
    ({"data": np.zeros((2, 12288), np.uint8)}, "no 'labels' field"),
    ({"data": np.zeros((2, 12288), np.uint8), "labels": [0, 5]}, r"'labels' must be 1..1000"),
    ({"data": np.zeros((2, 1000), np.uint8), "labels": [1, 2]}, "not 3\\*s\\*s"),
    ({"data": np.zeros((2, 12288), np.uint8), "labels": [1]}, "'labels' has shape"),
])
def test_imagenet64_bad_batches_name_file_and_field(tmp_path, bad, message):
    _write_pickle(tmp_path / "train_data_batch_1", bad)
    with pytest.raises(ValueError, match="train_data_batch_1: .*" + message):
        convert_imagenet64(tmp_path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "train" / "manifest.json").exists()


def test_imagenet64_empty_or_missing_folder(tmp_path):
    _write_pickle(tmp_path / "val_data", _batch(np.random.default_rng(0), 1))
    with pytest.raises(ConfigError, match="split 'train' asked for, but no train_data_batch_N"):
        convert_imagenet64(tmp_path, tmp_path / "out", splits=("train",), progress=False)
    (tmp_path / "val_data").unlink()
    with pytest.raises(ConfigError, match="none of train_data_batch_1..10 or val_data"):
        convert_imagenet64(tmp_path, tmp_path / "out", progress=False)
    with pytest.raises(ConfigError, match="not a folder"):
        convert_imagenet64(tmp_path / "nope", tmp_path / "out", progress=False)


def test_imagenet64_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    _write_pickle(tmp_path / "val_data", {"data": Evil(), "labels": [1]})
    with pytest.raises(pickle.UnpicklingError, match="val_data: refusing to load global builtins.eval"):
        convert_imagenet64(tmp_path, tmp_path / "out", progress=False)


def _image_folder(root, rng):
    """root/<class>/*.png (lossless, so expected pixels are exact) plus one JPEG."""
    files = {}
    for cls, n in (("n02", 3), ("n01", 2)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, (24, 36, 3), dtype=np.uint8)
            p = root / cls / f"img{i}.png"
            Image.fromarray(arr).save(p)
            files[f"{cls}/img{i}.png"] = (arr, cls)
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(root / "n01" / "x.JPEG")
    return files


def test_folder_converts_with_classes_from_subfolders(tmp_path):
    files = _image_folder(tmp_path / "src", np.random.default_rng(3))
    m = convert_folder(tmp_path / "src", tmp_path / "out", size=8, workers=1, progress=False)
    assert m.num_samples == 6 and m.shape == (3, 8, 8) and m.classes == ["n01", "n02"]
    _, got = _read(tmp_path / "out" / "train")
    for rel, (arr, cls) in files.items():
        img, label = got[rel]
        expect = np.asarray(Image.fromarray(arr[:, 6:30]).resize((8, 8), Image.Resampling.BOX))
        np.testing.assert_array_equal(img, expect)
        assert label == m.classes.index(cls)
    assert got["n01/x.JPEG"][1] == 0


def test_folder_in_worker_processes_matches_in_process(tmp_path):
    _image_folder(tmp_path / "src", np.random.default_rng(4))
    a = convert_folder(tmp_path / "src", tmp_path / "a", size=4, workers=1, progress=False)
    b = convert_folder(tmp_path / "src", tmp_path / "b", size=4, workers=2, progress=False)
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]


def test_folder_errors(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ConfigError, match="empty: no images found"):
        convert_folder(tmp_path / "empty", tmp_path / "out", size=8, workers=1, progress=False)
    src = tmp_path / "src"
    _image_folder(src, np.random.default_rng(5))
    (src / "n01" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"broken.jpg: cannot read image"):
        convert_folder(src, tmp_path / "out", size=8, workers=1, progress=False)
    assert not (tmp_path / "out" / "train" / "manifest.json").exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = convert_folder(src, tmp_path / "out", size=8, workers=1, skip_bad=True, overwrite=True, progress=False)
    assert m.num_samples == 6 and len(m.options["skipped"]) == 1
    assert any("broken.jpg" in str(w.message) for w in caught)
    assert sum(p.count for p in ShardSource(tmp_path / "out" / "train").pieces) == 6
