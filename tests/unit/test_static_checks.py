"""The static checks of .ci/run: vermin's minimum Python is pyproject's `requires-python`, and it catches code that
needs a newer Python (ruff and mypy run in .ci/run itself, configured in pyproject.toml)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _declared_minimum() -> str:
    text = (REPO / "pyproject.toml").read_text()
    return re.search(r'^requires-python = ">=(\d+\.\d+)"', text, re.M).group(1)


def test_ci_checks_the_minimum_python_that_pyproject_declares():
    ci = (REPO / ".ci" / "run").read_text()
    assert f"vermin --no-tips --violations --eval-annotations -t={_declared_minimum()}- " in ci
    assert re.search(r'target-version = "py(\d)(\d+)"', (REPO / "pyproject.toml").read_text()).groups() == \
        tuple(_declared_minimum().split("."))


def _vermin() -> str:
    exe = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    if exe is None:
        pytest.skip("vermin is not installed (requirements-test.txt; bash scripts/setup.sh installs it)")
    return exe


def test_vermin_refuses_code_that_needs_a_newer_python(tmp_path):
    ok = tmp_path / "ok.py"
    ok.write_text("from __future__ import annotations\n\ndef f(x: int | None) -> list[int]:\n    return [x or 0]\n")
    newer = tmp_path / "newer.py"     # tomllib and except* are Python 3.11
    newer.write_text("import tomllib\n\ntry:\n    pass\nexcept* ValueError:\n    pass\n")
    flags = ["--no-tips", "--violations", "--eval-annotations", f"-t={_declared_minimum()}-"]
    assert subprocess.run([_vermin(), *flags, str(ok)], capture_output=True, timeout=120).returncode == 0
    res = subprocess.run([_vermin(), *flags, str(newer)], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "tomllib" in res.stdout, res.stdout
