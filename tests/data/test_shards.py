"""The shard writer and reader: bit-exact round trip, manifest, atomic writes, bad shards."""

import io
import json
import tarfile

import numpy as np
import pytest

from dsm.data.shards import (
    MANIFEST,
    Manifest,
    ShardError,
    ShardSource,
    ShardWriter,
    auto_shard_size,
    iter_shard,
)
from dsm.plumbing.fileio import sha256_file
from tests.data._util import write_shards


def test_round_trip_is_bit_exact(shards):
    folder, written = shards
    m = Manifest.load(folder)
    assert m.num_samples == 80 and len(m.shards) == 8 and m.shape == (3, 8, 8) and m.split == "train"
    read = {}
    for info in m.shards:
        for s in iter_shard(folder / info.file, expected_samples=info.samples, shape=m.shape, with_meta=True):
            assert s.key not in read
            read[s.key] = s
    assert read.keys() == written.keys()
    for key, img in written.items():
        np.testing.assert_array_equal(read[key].image, img)
        assert read[key].image.dtype == np.uint8
    s = read["train-00000009"]
    assert s.label == 9 % 7 and s.meta == {"source_id": "test:9"}


def test_gray_round_trip_and_source_layout(tmp_path):
    written = write_shards(tmp_path / "g", 12, shape=(1, 5, 6), shard_size=5)
    src = ShardSource(tmp_path / "g")
    assert [p.count for p in src.pieces] == [5, 5, 2]
    got = {k: x for p in src.pieces for k, x, _ in src.read(p)}
    for k, img in written.items():
        assert got[k].shape == (1, 5, 6)  # CHW
        np.testing.assert_array_equal(got[k][0], img[:, :, 0])


def test_manifest_records_hashes_sizes_and_members(shards):
    folder, _ = shards
    d = json.loads((folder / MANIFEST).read_text())
    assert d["num_samples"] == 80 and d["shape"] == [3, 8, 8] and d["layout"] == "CHW"
    assert d["source"] == "test" and d["split"] == "train" and d["options"]["shard_size"] == 10
    for s in d["shards"]:
        assert sha256_file(folder / s["file"]) == s["sha256"]
        assert (folder / s["file"]).stat().st_size == s["bytes"]
    with tarfile.open(folder / "train-000000.tar") as t:
        names = t.getnames()
    assert names[:3] == ["train-00000000.cls", "train-00000000.json", "train-00000000.png"]
    assert len(names) == 30  # grouped per sample, three members each


def test_same_samples_give_identical_shards(tmp_path):
    write_shards(tmp_path / "a", 20, shard_size=7)
    write_shards(tmp_path / "b", 20, shard_size=7)
    a, b = Manifest.load(tmp_path / "a"), Manifest.load(tmp_path / "b")
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]


def test_failed_write_leaves_nothing_that_looks_complete(tmp_path):
    folder = tmp_path / "train"
    rng = np.random.default_rng(0)
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(folder, "train", shape=(3, 4, 4), source="t", shard_size=4) as w:
            for _ in range(6):
                w.write(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
            raise RuntimeError("boom")
    assert not (folder / MANIFEST).exists()
    # the finished first shard may stay, under its final name; the partial second one is gone
    assert sorted(p.name for p in folder.iterdir()) == ["train-000000.tar"]


def test_writer_checks_shapes_and_refuses_to_overwrite(tmp_path):
    write_shards(tmp_path / "s", 3)
    with pytest.raises(FileExistsError, match="overwrite"):
        ShardWriter(tmp_path / "s", "train", shape=(3, 8, 8), source="t")
    with ShardWriter(tmp_path / "s", "train", shape=(3, 8, 8), source="t", overwrite=True) as w:
        with pytest.raises(ValueError, match=r"\(1, 8, 8\).*\(3, 8, 8\)"):
            w.write(np.zeros((8, 8), np.uint8))
        w.write(np.zeros((8, 8, 3), np.uint8))
    assert Manifest.load(tmp_path / "s").num_samples == 1
    assert len(list((tmp_path / "s").glob("*.tar"))) == 1


def test_auto_shard_size():
    assert auto_shard_size(1438) == 90
    assert auto_shard_size(1_281_167) == 2000
    assert auto_shard_size(3) == 1


def _rewrite(path, members):
    with tarfile.open(path, "w") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def _members(path):
    with tarfile.open(path) as t:
        return [(m.name, t.extractfile(m).read()) for m in t.getmembers()]


@pytest.mark.parametrize("extra", [100, 0], ids=["mid-block", "block-boundary"])
def test_truncated_tar_names_the_file(shards, extra):
    folder, _ = shards
    path = folder / "train-000003.tar"
    data = path.read_bytes()
    path.write_bytes(data[: 512 * 20 + extra])  # cut inside the shard (whole 512-byte blocks, or not)
    with pytest.raises(ShardError, match="train-000003.tar: corrupt or truncated"):
        list(iter_shard(path, expected_samples=10))


def test_tar_cut_at_a_member_boundary_fails_the_count(shards):
    folder, _ = shards
    path = folder / "train-000001.tar"
    _rewrite(path, _members(path)[:12])  # 4 whole samples of 10
    with pytest.raises(ShardError, match=r"train-000001.tar: 4 samples read but the manifest says 10"):
        list(iter_shard(path, expected_samples=10))


def test_garbage_file_names_the_file(shards):
    folder, _ = shards
    path = folder / "train-000002.tar"
    path.write_bytes(b"\x00\x13not a tar at all" * 100)
    with pytest.raises(ShardError, match="train-000002.tar"):
        list(iter_shard(path, expected_samples=10))


def test_missing_image_key_and_wrong_shape(shards):
    folder, _ = shards
    path = folder / "train-000000.tar"
    members = _members(path)
    _rewrite(path, [(n, d) for n, d in members if n != "train-00000004.png"])
    with pytest.raises(ShardError, match=r"train-000000.tar: sample 'train-00000004' has no image \(.png\)"):
        list(iter_shard(path))
    skipped = []
    out = list(iter_shard(path, on_sample_error=skipped.append))
    assert len(out) == 9 and len(skipped) == 1 and "train-00000004" in str(skipped[0])
    with pytest.raises(ShardError, match=r"train-000005.tar: sample 'train-00000050': image shape "
                                         r"\(C, H, W\) = \(3, 8, 8\), the manifest says \(1, 8, 8\)"):
        list(iter_shard(folder / "train-000005.tar", shape=(1, 8, 8)))


def test_bad_manifests_name_file_and_field(tmp_path, shards):
    folder, _ = shards
    with pytest.raises(ShardError, match="no manifest"):
        Manifest.load(tmp_path)
    d = json.loads((folder / MANIFEST).read_text())
    d["shape"] = [2, 8, 8]
    (folder / MANIFEST).write_text(json.dumps(d))
    with pytest.raises(ShardError, match="manifest.json: field 'shape'"):
        Manifest.load(folder)
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(ShardError, match="manifest.json: not valid JSON"):
        Manifest.load(folder)


def test_missing_shard_is_named(shards):
    folder, _ = shards
    (folder / "train-000006.tar").unlink()
    with pytest.raises(ShardError, match="train-000006.tar: listed in manifest.json but missing"):
        ShardSource(folder)


def test_check_sizes_names_a_shard_whose_size_disagrees(shards):

    folder, _ = shards
    ShardSource(folder).check_sizes()
    path = folder / "train-000002.tar"
    path.write_bytes(path.read_bytes()[:1024])
    with pytest.raises(ShardError, match=r"train-000002.tar: 1024 bytes, but manifest.json says \d+ \(truncated"):
        ShardSource(folder).check_sizes()
