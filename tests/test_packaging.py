"""The wheel: built from this checkout, installed into a fresh venv (without the dev extra), and
run outside the repository: the built-in configs, the version and the notebook API come with it."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _venv_with_the_wheel(tmp_path: Path) -> Path:
    """A fresh venv holding only the wheel; its dependencies are found in this environment's
    site-packages through a path file (installing torch, Ray and MLflow again would take minutes
    and, off the dev machines, the network). This environment's editable dsm stays out: a path
    file adds a folder to sys.path without running that folder's own path files."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True, text=True)
    wheel = next((tmp_path / "dist").glob("dsm-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   capture_output=True, text=True)
    return venv


@pytest.mark.slow  # builds a wheel, then trains a few steps in a fresh interpreter with its own Ray
def test_the_wheel_installs_and_runs_outside_the_repository(tmp_path):
    venv = _venv_with_the_wheel(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH", "DSM_WORKSPACE")}
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*cmd: str) -> str:
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    python, dsm = str(venv / "bin" / "python"), str(venv / "bin" / "dsm")
    where = run(python, "-c", "import dsm; print(dsm.__file__, dsm.__version__)").split()
    assert where[0].startswith(str(venv)) and where[1][0].isdigit()  # the wheel's dsm, not this checkout's
    assert run(dsm, "--version").strip() == f"dsm {where[1]}"
    out = run(dsm, "train", "digits-smoke", "steps=20", "checkpoint.every=10", "eval.samples=32",
              "eval.consistency=false", "--workers", "1", "--workspace", str(work / "ws"), "--quiet")
    model = out.strip().splitlines()[-1]
    assert model.endswith("model.pt") and Path(model).is_file() and model.startswith(str(work))
    logp = json.loads(run(python, "-c", "import json, sys, torch, dsm.api; m = dsm.api.load(sys.argv[1]); "
                          "print(json.dumps(m.log_prob(torch.full((3, 1, 8, 8), 128, dtype=torch.uint8)).tolist()))",
                          model))
    assert len(logp) == 3 and all(abs(v) < 1e6 for v in logp)  # finite numbers, one per image
