"""dsm.plumbing.fileio: atomic writes, and reading torch files without ever running code from them."""

import os

import numpy as np
import pytest
import torch

from dsm.plumbing.fileio import atomic_path, load_torch_file


class _RunsCode:
    """Pickles as a call of os.system: what a hostile checkpoint or model file would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_file_that_would_run_code_is_refused_in_dsm_words(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"format": "dsm-model", "payload": _RunsCode(marker)}, path)
    with pytest.raises(ValueError) as e:
        load_torch_file(path, "dsm model")
    msg = str(e.value)
    assert not marker.exists()
    assert str(path) in msg and "not a trusted dsm model" in msg and "system" in msg
    assert "weights_only" not in msg and "\n" not in msg  # never point at the unsafe option


# Random bytes: a few fixed draws (each breaks torch's unpickler differently), and one fresh one
RANDOM = [np.random.default_rng(seed).bytes(2000) for seed in range(6)] + [os.urandom(2000)]


@pytest.mark.parametrize("content, says", [(b"", "empty"), *[(r, "not a dsm model") for r in RANDOM],
                                           (None, "not a readable dsm model")])
def test_unreadable_files_give_one_line_naming_the_file(tmp_path, content, says):
    path = tmp_path / "model.pt"
    if content is None:  # a torch.save archive cut in half
        torch.save({"x": torch.zeros(100)}, path)
        content = path.read_bytes()[:300]
    path.write_bytes(content)
    with pytest.raises(ValueError) as e:
        load_torch_file(path, "dsm model")
    msg = str(e.value)
    assert msg.startswith(str(path)) and says in msg and "\n" not in msg and "weights_only" not in msg


def test_plain_contents_round_trip(tmp_path):
    blob = {"w": torch.arange(3.0), "pending": [(1, {"loss": 0.5})], "name": "x", "n": 3}
    with atomic_path(tmp_path / "a.pt") as tmp:
        torch.save(blob, tmp)
    back = load_torch_file(tmp_path / "a.pt", "test file")
    assert torch.equal(back["w"], blob["w"]) and back["pending"] == [(1, {"loss": 0.5})]
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


HOLD = """
import sys, time
from dsm.plumbing.fileio import exclusive
with exclusive(sys.argv[1], "test", name=sys.argv[2]):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def _holder(folder, seconds, name=".dsm.lock"):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), name, str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_exclusive_names_the_holder_or_waits_for_it(tmp_path):
    import time

    from dsm.plumbing.fileio import Busy, exclusive

    proc = _holder(tmp_path, 3)
    with pytest.raises(Busy) as e:
        with exclusive(tmp_path, "run 'x'"):
            pass
    assert f"pid {proc.pid}" in str(e.value) and "run 'x' is in use" in str(e.value)
    t0 = time.monotonic()
    with exclusive(tmp_path, "run 'x'", wait=True):
        waited = time.monotonic() - t0
    assert waited > 1.0  # until the holder's 3 s were over
    proc.wait(timeout=10)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    from dsm.plumbing.fileio import exclusive

    proc = _holder(tmp_path, 60)
    proc.kill()
    proc.wait()
    with exclusive(tmp_path, "run 'x'"):  # the kernel released it with the process
        pass
