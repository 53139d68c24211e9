"""benchmarks/gpu_check.py, the GPU check, run on the CPU at its quick sizes: the script that the
first GPU machine will run must not rot before one is lent (it asserts nothing about speed here)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("0_warm_up", "1_ops", "2_cpu_vs_device", "3_precision", "4_throughput", "5_ddp_one_rank",
            "6_two_ranks", "7_resume", "8_scoring")


def _numbers(value):
    """Every number inside a JSON value (booleans and n/a entries, which are None, left out)."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


@pytest.mark.slow  # a subprocess that imports torch and trains a few steps (about 11 s): outside the quick loop
def test_quick_cpu_run_passes_and_reports_every_section(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["failures"] == [] and doc["device"] == "cpu"
    for key in SECTIONS:
        sec = doc["sections"][key]
        assert sec["error"] is None, (key, sec["error"])
        numbers = list(_numbers({"checks": sec["checks"], "values": sec["values"]}))
        assert numbers and all(math.isfinite(v) for v in numbers), (key, sec)
        assert all(c["ok"] is not False for c in sec["checks"]), (key, sec["checks"])
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| section | check | value | tolerance | result |" in md
    assert md.count("| 8_scoring |") == 1 and "machine:" in md and "torch " in md
