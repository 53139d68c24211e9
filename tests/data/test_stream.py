"""The training and evaluation streams: exactly-once, balance, determinism, errors, .npy data."""

import warnings

import numpy as np
import pytest
import torch

import dsm.data.stream as stream_module
from dsm.core.units import to_unit_float
from dsm.data.npy import NpySource
from dsm.data.shards import ShardError
from dsm.data.stream import EvalStream, TrainStream, make_loader
from tests.data._util import write_shards


def _as_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    if x.dtype != torch.uint8:
        x = (x * 255).round().to(torch.uint8)
    return x.permute(1, 2, 0).numpy()


def test_exact_mode_two_ranks_two_workers_sees_every_sample_once(shards):
    folder, written = shards  # 8 shards of 10
    orders = []
    for epoch in (0, 1):
        seen, flipped, order = [], 0, []
        for rank in (0, 1):
            stream = TrainStream(folder, batch_size=4, mode="exact", rank=rank, world_size=2, seed=7,
                                 shuffle_buffer=16, flips=True)
            stream.set_epoch(epoch)
            loader = make_loader(stream, num_workers=2)  # real worker processes, one torch thread each
            batches = list(loader)
            assert len(batches) == stream.batches_per_epoch() == 10
            for b in batches:
                assert b["x"].dtype == torch.uint8 and b["x"].shape[1:] == (3, 8, 8)  # bytes through the loader
                for key, x in zip(b["key"], b["x"]):
                    img = _as_uint8_hwc(x)
                    if np.array_equal(img, written[key]):
                        pass
                    else:
                        np.testing.assert_array_equal(img, written[key][:, ::-1])
                        flipped += 1
                seen += b["key"]
                order += b["key"]
        assert len(seen) == 80 and set(seen) == set(written), "every sample exactly once per epoch"
        assert 10 < flipped < 70
        orders.append(order)
    assert orders[0] != orders[1], "a new epoch reshuffles"


def test_resampled_mode_gives_every_rank_the_same_batch_count(tmp_path):
    folder = tmp_path / "train"
    write_shards(folder, 83, shard_size=10)  # uneven: the last shard holds 3
    counts = []
    for rank, workers in ((0, 2), (1, 0), (2, 0)):
        stream = TrainStream(folder, batch_size=5, rank=rank, world_size=3, batches_per_epoch=7, shuffle_buffer=8)
        batches = list(make_loader(stream, num_workers=workers))
        assert all(len(b["key"]) == 5 for b in batches)
        counts.append(len(batches))
    assert counts == [7, 7, 7]
    default = TrainStream(folder, batch_size=5, rank=0, world_size=3)
    assert default.batches_per_epoch() == 6 == len(list(default))  # ceil(83 / (3 * 5))


def test_stream_is_deterministic_given_seed_rank_and_epoch(shards):
    folder, _ = shards

    def run(seed=1, rank=0, epoch=0, mode="resampled"):
        s = TrainStream(folder, batch_size=6, mode=mode, seed=seed, rank=rank, world_size=2, flips=True,
                        shuffle_buffer=20, **({"batches_per_epoch": 5} if mode == "resampled" else {}))
        s.set_epoch(epoch)
        out = list(s)
        return [k for b in out for k in b["key"]], torch.cat([b["x"] for b in out])

    for mode in ("resampled", "exact"):
        k1, x1 = run(mode=mode)
        k2, x2 = run(mode=mode)
        assert k1 == k2 and torch.equal(x1, x2)
        assert run(mode=mode, epoch=1)[0] != k1
        assert run(mode=mode, rank=1)[0] != k1
        assert run(mode=mode, seed=2)[0] != k1


def test_rank_and_world_size_come_from_the_environment(shards, monkeypatch):
    folder, _ = shards
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    s = TrainStream(folder, batch_size=5, mode="exact")
    assert (s.rank, s.world_size) == (1, 4)
    assert s.batches_per_epoch() == 4  # shards 1 and 5: 20 samples
    assert {k for b in s for k in b["key"]} == {f"train-{i:08d}" for i in [*range(10, 20), *range(50, 60)]}


def test_exact_mode_refuses_layouts_that_would_deadlock(shards, tmp_path):
    folder, _ = shards
    with pytest.raises(ValueError, match=r"at least ranks x loader workers = 4 x 3 = 12 shards; .* has 8"):
        TrainStream(folder, batch_size=4, mode="exact", rank=0, world_size=4, loader_workers=3)
    s = TrainStream(folder, batch_size=4, mode="exact", rank=0, world_size=4)
    with pytest.raises(ValueError, match="at least ranks x loader workers"):
        make_loader(s, num_workers=3)
    uneven = tmp_path / "uneven"
    write_shards(uneven, 35, shard_size=10)  # 10, 10, 10, 5
    with pytest.raises(ValueError, match=r"different numbers of batches per epoch \[4, 3\].*deadlock DDP"):
        TrainStream(uneven, batch_size=5, mode="exact", rank=0, world_size=2, loader_workers=1)
    with pytest.raises(ValueError, match="exact mode needs on_error='raise'"):
        TrainStream(folder, batch_size=4, mode="exact", on_error="skip")


def test_eval_stream_is_in_order_without_flips(shards):
    folder, written = shards
    batches = list(EvalStream(folder, batch_size=16))
    keys = [k for b in batches for k in b["key"]]
    assert keys == sorted(written) and [len(b["key"]) for b in batches] == [16] * 5
    x = torch.cat([b["x"] for b in batches])
    for i, key in enumerate(keys):
        np.testing.assert_array_equal(_as_uint8_hwc(x[i]), written[key])
    labels = torch.cat([b["label"] for b in batches])
    assert labels.tolist() == [i % 7 for i in range(80)]
    parts = [[k for b in EvalStream(folder, batch_size=16, rank=r, world_size=3) for k in b["key"]] for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(written)


def test_corrupt_shard_raises_with_its_name_or_is_skipped_and_counted(shards):
    folder, _ = shards
    bad = folder / "train-000002.tar"
    bad.write_bytes(bad.read_bytes()[:5000])
    with pytest.raises(ShardError, match="train-000002.tar: corrupt or truncated"):
        list(EvalStream(folder, batch_size=8))
    s = EvalStream(folder, batch_size=8, on_error="skip")
    with pytest.warns(RuntimeWarning, match="train-000002.tar.*1 shards skipped so far"):
        keys = [k for b in s for k in b["key"]]
    assert len(keys) == 70 and s.skipped == {"shards": 1}
    r = TrainStream(folder, batch_size=8, batches_per_epoch=20, on_error="skip", shuffle_buffer=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert len(list(r)) == 20 and r.skipped["shards"] >= 1
    with pytest.raises(ShardError, match="train-000002.tar"):
        list(TrainStream(folder, batch_size=8, mode="exact"))


def test_error_in_a_loader_worker_names_the_shard(shards):
    folder, _ = shards
    (folder / "train-000005.tar").write_bytes(b"\x00" * 100)
    loader = make_loader(TrainStream(folder, batch_size=8, mode="exact"), num_workers=2)
    with pytest.raises(Exception, match="train-000005.tar"):
        list(loader)


def test_npy_vectors_and_images(tmp_path):
    vec = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    np.save(tmp_path / "v.npy", vec)
    s = TrainStream(tmp_path / "v.npy", batch_size=10, mode="exact", shuffle_buffer=0)
    x = torch.cat([b["x"] for b in s])
    assert x.shape == (50, 3) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.from_numpy(vec), rtol=0, atol=0)
    with pytest.raises(ValueError, match="flips need images"):
        TrainStream(tmp_path / "v.npy", batch_size=10, flips=True)

    img = np.random.default_rng(1).integers(0, 256, (30, 6, 5, 3), dtype=np.uint8)  # NHWC
    np.save(tmp_path / "i.npy", img)
    src = NpySource(tmp_path / "i.npy", piece_size=4)
    assert src.shape == (3, 6, 5) and len(src.pieces) == 8
    keys, xs = [], []
    for rank in (0, 1):
        stream = TrainStream(src, batch_size=4, mode="exact", rank=rank, world_size=2, flips=True, seed=3)
        for b in make_loader(stream, num_workers=0):
            keys += b["key"]
            xs.append(b["x"])
    assert sorted(keys, key=lambda k: int(k.split(":")[1])) == [f"i:{i}" for i in range(30)]
    for key, x in zip(keys, torch.cat(xs)):
        got, orig = _as_uint8_hwc(x), img[int(key.split(":")[1])]
        assert np.array_equal(got, orig) or np.array_equal(got, orig[:, ::-1])


def test_empty_folder_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="empty/manifest.json: no manifest"):
        TrainStream(tmp_path / "empty", batch_size=4)
    with pytest.raises(ShardError, match="no manifest"):
        EvalStream(tmp_path / "empty", batch_size=4)


def test_npy_bad_input(tmp_path):
    np.save(tmp_path / "s.npy", np.zeros((4, 5), np.int32))
    with pytest.raises(ShardError, match="s.npy: dtype int32"):
        NpySource(tmp_path / "s.npy")
    np.save(tmp_path / "a.npy", np.zeros((4, 5, 5, 5), np.uint8))
    with pytest.raises(ShardError, match="a.npy: cannot tell the channel axis"):
        NpySource(tmp_path / "a.npy")
    assert NpySource(tmp_path / "a.npy", layout="nhwc").shape == (5, 5, 5)


def test_eight_bit_batches_are_bytes_and_convert_as_before(shards):
    folder, written = shards
    stream = TrainStream(folder, batch_size=6, seed=2, flips=True, batches_per_epoch=4, shuffle_buffer=12)
    for b in make_loader(stream, num_workers=1):
        assert b["x"].dtype == torch.uint8 and b["x"].shape == (6, 3, 8, 8) and b["x"].is_contiguous()
        x = to_unit_float(b["x"])
        for key, img, xf in zip(b["key"], b["x"], x):
            orig = written[key]
            assert np.array_equal(_as_uint8_hwc(img), orig) or np.array_equal(_as_uint8_hwc(img), orig[:, ::-1])
            assert torch.equal(xf, img.float() / 255)


def _record_start(path, worker_id: int) -> None:
    torch.set_num_threads(1)
    with open(path, "a") as f:
        f.write(f"{worker_id}\n")


def test_set_epoch_reaches_persistent_loader_workers(shards, tmp_path, monkeypatch):
    """One loader over several epochs: its workers start once and still read each new epoch."""
    import functools

    folder, _ = shards
    starts = tmp_path / "starts"
    monkeypatch.setattr(stream_module, "_one_thread", functools.partial(_record_start, starts))

    def keys(loader):
        return [k for b in loader for k in b["key"]]

    def fresh(epoch):  # a new stream and loader per epoch, as before workers persisted
        s = TrainStream(folder, batch_size=4, mode="exact", seed=5, flips=True, shuffle_buffer=8)
        s.set_epoch(epoch)
        return keys(make_loader(s, num_workers=2))

    expected = [fresh(e) for e in range(3)]
    starts.unlink()
    stream = TrainStream(folder, batch_size=4, mode="exact", seed=5, flips=True, shuffle_buffer=8)
    loader = make_loader(stream, num_workers=2)
    got = []
    for epoch in range(3):
        stream.set_epoch(epoch)
        got.append(keys(loader))
    assert got == expected and expected[0] != expected[1]
    assert sorted(starts.read_text().split()) == ["0", "1"], "two workers, started once for three epochs"
