"""``dsm data ...`` through the real entry point: exit codes and messages."""

import numpy as np

from dsm.cli import main
from tests.data._util import write_shards


def test_prepare_then_verify(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["data", "prepare", "digits", "--out", str(out), "--size", "4", "--first", "100", "--seed", "2",
                 "--shard-size", "30", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "train: 100 samples of 1x4x4 in 4 shards" in text and "test: 359 samples" in text
    assert main(["data", "verify", str(out), "--quiet"]) == 0
    assert "ok" in capsys.readouterr().out
    # existing output is not replaced without --force
    assert main(["data", "prepare", "digits", "--out", str(out), "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err


def test_bad_names_and_options_exit_2(tmp_path, capsys):
    assert main(["data", "prepare", "imagenet", "--out", str(tmp_path)]) == 2
    assert "valid: digits, fashion-mnist, mnist, patches" in capsys.readouterr().err
    assert main(["data", "prepare", "digits", "--out", str(tmp_path), "--size", "-3"]) == 2
    assert "--size" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["data", "convert", "folder", str(tmp_path / "empty"), str(tmp_path / "o"), "--size", "8"]) == 2
    assert "no images found" in capsys.readouterr().err


def test_verify_reports_files_and_exits_1(tmp_path, capsys):
    write_shards(tmp_path / "train", 20, shard_size=5)
    p = tmp_path / "train" / "train-000002.tar"
    p.write_bytes(p.read_bytes()[:-2048])
    assert main(["data", "verify", str(tmp_path / "train"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "train-000002.tar:" in err and "problem(s)" in err


def test_convert_imagenet64_npz(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    np.savez(src / "train_data_batch_1.npz", data=rng.integers(0, 256, (3, 12288), dtype=np.uint8),
             labels=np.array([1, 500, 1000]))
    assert main(["data", "convert", "imagenet64", str(src), str(tmp_path / "out"), "--size", "16", "--quiet"]) == 0
    assert "train: 3 samples of 3x16x16" in capsys.readouterr().out
