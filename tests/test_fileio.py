"""dsm.fileio: atomic writes, and reading torch files without ever running code from them."""

import os

import pytest
import torch

from dsm.fileio import atomic_path, load_torch_file


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


@pytest.mark.parametrize("content, says", [(b"", "empty"), (os.urandom(2000), "not a dsm model"),
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
