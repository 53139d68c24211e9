"""verify: every problem is reported with its file name."""

import json

from dsm.data.shards import MANIFEST
from dsm.data.verify import verify
from tests.data._util import write_shards


def test_good_shards_have_no_problems(shards, tmp_path):
    assert verify(shards[0]) == []
    write_shards(tmp_path / "test", 5, split="test")
    assert verify(tmp_path) == []  # a folder of split folders


def test_hash_mismatch_names_the_shard(shards):
    folder, _ = shards
    path = folder / "train-000004.tar"
    data = bytearray(path.read_bytes())
    i = data.index(b"IDAT") + 12  # flip one byte of compressed pixel data: same size, new hash
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = verify(folder)
    assert problems, "a modified shard must be reported"
    assert all("train-000004.tar" in p.file for p in problems)
    assert any("sha256" in p.message for p in problems)
    quick = verify(folder, decode=False)
    assert [p.file for p in quick] == [str(path)] and "sha256" in quick[0].message


def test_every_problem_is_listed(shards):
    folder, _ = shards
    (folder / "train-000001.tar").unlink()
    p2 = folder / "train-000002.tar"
    p2.write_bytes(p2.read_bytes()[:3000])
    (folder / "stray-000000.tar").write_bytes(b"")
    (folder / ".train-000008.tar.tmp-123").write_bytes(b"")
    m = json.loads((folder / MANIFEST).read_text())
    m["shards"][3]["samples"] = 11
    m["num_samples"] += 1
    (folder / MANIFEST).write_text(json.dumps(m))
    text = "\n".join(map(str, verify(folder)))
    assert "train-000001.tar: listed in manifest.json but missing" in text
    assert "train-000002.tar: 3000 bytes, the manifest says" in text
    assert "train-000002.tar: corrupt or truncated tar" in text
    assert "stray-000000.tar: not listed in manifest.json" in text
    assert ".train-000008.tar.tmp-123: left over from an unfinished write" in text
    assert "train-000003.tar: 10 samples read but the manifest says 11" in text


def test_no_manifest(tmp_path):
    (tmp_path / "x").mkdir()
    problems = verify(tmp_path / "x")
    assert len(problems) == 1 and "no manifest.json" in problems[0].message
