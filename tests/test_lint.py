"""The code passes ruff with the project's configuration (pyproject.toml [tool.ruff]), so the
linter runs wherever the tests do, CI included."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


MAX_FUNCTION_LINES = 60
LINE_LIMITED = ("dsm", "benchmarks")


def test_functions_stay_under_60_lines():
    """Every function and method of the package and the benchmarks, decorators excluded, from
    its ``def`` line to its last line (docstring included)."""
    import ast

    long = []
    for folder in LINE_LIMITED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions over 60 lines: " + "; ".join(long)


def test_ruff_holds_the_size_of_every_function():
    """Complexity, branches and statements are ruff's to check (pyproject.toml), for the package,
    the benchmarks and the scripts; only tests and analysis scripts are exempt."""
    import tomllib

    lint = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    assert {"C901", "PLR0912", "PLR0915"} <= set(lint["select"])
    assert lint["mccabe"]["max-complexity"] <= 12
    assert lint["pylint"]["max-branches"] <= 12 and lint["pylint"]["max-statements"] <= 40
    exempt = {k for k, rules in lint.get("per-file-ignores", {}).items() if {"C901", "PLR0915"} & set(rules)}
    assert exempt <= {"tests/**", "analysis/**"}, exempt
