"""Shards in a bucket and behind a web server: the streams read them as they read a
local folder, writers write straight to a URL, and verify checks remote objects. Real servers:
moto's S3 server and http.server on 127.0.0.1 (tests/servers.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dsm.core.units import to_unit_float
from dsm.data.shards import Manifest, ShardError, ShardSource, write_split
from dsm.data.stream import EvalStream, TrainStream, make_loader
from dsm.data.verify import verify
from dsm.plumbing.store import Location
from tests import servers


def _batches(stream, epochs=(0, 1)) -> list[tuple[list[str], torch.Tensor]]:
    out = []
    for epoch in epochs:
        if hasattr(stream, "set_epoch"):
            stream.set_epoch(epoch)
        out += [(b["key"], b["x"]) for b in make_loader(stream)]
    return out


def _same(a, b) -> None:
    assert len(a) == len(b) and len(a) > 0
    for (ka, xa), (kb, xb) in zip(a, b):
        assert ka == kb
        assert torch.equal(xa, xb)


def test_the_same_seed_gives_the_same_batches_from_disk_s3_and_http(shards, bucket):
    folder, _ = shards
    url = f"{bucket}/digits/train"
    servers.upload(folder, url)
    with servers.HTTPServer(folder.parent) as http:
        places = [str(folder), url, f"{http.url}/train"]
        for kw in ({"mode": "resampled"}, {"mode": "exact"}):
            got = [_batches(TrainStream(p, batch_size=7, seed=3, rank=1, world_size=2, flips=True, **kw))
                   for p in places]
            _same(got[0], got[1])
            _same(got[0], got[2])
        evals = [_batches(EvalStream(p, batch_size=16, rank=0, world_size=1), epochs=(0,)) for p in places]
        _same(evals[0], evals[1])
        _same(evals[0], evals[2])


def test_each_rank_reads_only_its_own_shards(shards):
    folder, _ = shards
    with servers.HTTPServer(folder.parent) as http:
        source = ShardSource(f"{http.url}/train")
        assert [p.name for p in source.pieces] == [f"{http.url}/train/train-{i:06d}.tar" for i in range(8)]
        before = http.state["gets"]
        stream = TrainStream(source, batch_size=10, mode="exact", rank=0, world_size=2, shuffle_buffer=0)
        keys = [k for b in make_loader(stream) for k in b["key"]]
        assert len(keys) == 40
        assert http.state["gets"] - before == 4  # 4 of the 8 shards, each fetched once


def test_a_missing_shard_names_its_url(shards, bucket):
    folder, _ = shards
    (folder / "train-000003.tar").unlink()
    servers.upload(folder, f"{bucket}/t")
    with pytest.raises(ShardError, match=rf"^{bucket}/t/train-000003\.tar: listed in manifest\.json but missing$"):
        ShardSource(f"{bucket}/t")
    with servers.HTTPServer(folder.parent) as http:
        with pytest.raises(ShardError, match=r"^http://127.0.0.1:\d+/train/train-000003\.tar: listed in manifest"):
            ShardSource(f"{http.url}/train")
        with pytest.raises(ShardError, match=r"^http://127.0.0.1:\d+/nowhere/manifest\.json: no manifest"):
            ShardSource(f"{http.url}/nowhere")


def test_a_shard_gone_mid_epoch_fails_like_a_corrupt_one(shards, bucket):
    folder, _ = shards
    url = f"{bucket}/gone"
    servers.upload(folder, url)
    source = ShardSource(url)
    Location.of(f"{url}/train-000005.tar").remove()
    stream = EvalStream(source, batch_size=10)
    with pytest.raises(ShardError, match=rf"^{url}/train-000005\.tar: cannot read shard \(no such file or object\)"):
        list(stream)
    skipping = EvalStream(source, batch_size=10, on_error="skip")
    with pytest.warns(RuntimeWarning, match="train-000005.tar"):
        keys = [k for b in skipping for k in b["key"]]
    assert len(keys) == 70 and skipping.skipped == {"shards": 1}


def test_a_truncated_remote_shard_is_named_before_training(shards, bucket):
    folder, _ = shards
    url = f"{bucket}/cut"
    servers.upload(folder, url)
    data = (folder / "train-000002.tar").read_bytes()
    Location.of(f"{url}/train-000002.tar").write_bytes(data[:-2048])
    with pytest.raises(ShardError, match=rf"^{url}/train-000002\.tar: \d+ bytes, but manifest.json says"):
        ShardSource(url).check_sizes()


def test_shards_are_written_straight_to_a_bucket_and_verified_there(bucket, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    url = f"{bucket}/made/train"
    m = write_split(url, "train", ((im, i % 3, {"source_id": str(i)}) for i, im in enumerate(images)),
                    shape=(3, 8, 8), source="test", shard_size=8, progress=False)
    assert sorted(Location.of(url).listing()) == ["manifest.json", *(f"train-{i:06d}.tar" for i in range(4))]
    assert Manifest.load(url).num_samples == 30 == m.num_samples
    assert verify(f"{bucket}/made") == []
    x = to_unit_float(torch.cat([b["x"] for b in EvalStream(url, batch_size=30)]))
    assert torch.equal(x, torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).float() / 255)
    with pytest.raises(FileExistsError, match="already holds split 'train'"):
        write_split(url, "train", iter([]), shape=(3, 8, 8), source="test", progress=False)


def test_verify_names_a_corrupted_object(shards, bucket):
    folder, _ = shards
    url = f"{bucket}/v/train"
    servers.upload(folder, url)
    data = bytearray((folder / "train-000004.tar").read_bytes())
    data[600:610] = b"XXXXXXXXXX"  # same size, other bytes
    Location.of(f"{url}/train-000004.tar").write_bytes(bytes(data))
    Location.of(f"{url}/extra.tar").write_bytes(b"")
    problems = [str(p) for p in verify(url)]
    assert problems[0] == f"{url}/extra.tar: not listed in manifest.json"
    assert any(p.startswith(f"{url}/train-000004.tar: sha256 ") for p in problems)
    out = subprocess.run([sys.executable, "-m", "dsm.cli", "data", "verify", f"{bucket}/v", "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and f"{url}/train-000004.tar: sha256" in out.stderr


def test_dsm_data_prepare_writes_to_a_bucket(bucket, tmp_path):
    out = subprocess.run([sys.executable, "-m", "dsm.cli", "data", "prepare", "digits", "--out", f"{bucket}/digits",
                          "--quiet"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"wrote {bucket}/digits" in out.stdout
    assert Manifest.load(f"{bucket}/digits/train").num_samples > 1000
    assert verify(f"{bucket}/digits", decode=False) == []
    assert not list(Path(tmp_path).iterdir())  # nothing staged in the working folder


def test_http_is_read_only_for_writers(tmp_path):
    with servers.HTTPServer(tmp_path) as http, pytest.raises(ValueError, match="HTTP URLs are read-only"):
        write_split(f"{http.url}/x", "train", iter([]), shape=(3, 8, 8), source="t", progress=False)

