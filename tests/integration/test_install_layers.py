"""What an accelerator node relies on: the core layer needs no torch, the suite's processes do not expose the
repo's datasets/ folder as a package (it would shadow Hugging Face's `datasets`), and `suite env` tells which
runtimes are usable here."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from common import BOOTSTRAP, IMPORT_PATH
from helpers import REPO, run_script

EXPORT_ONLY = ("torch", "transformers", "mmengine", "onnxsim", "safetensors")


def _requirement_names(path) -> set:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(line.split("=")[0].split(">")[0].split("<")[0].split("[")[0].strip().lower())
    return names


def test_core_requirements_hold_no_torch_and_setup_has_a_core_layer():
    core = _requirement_names(REPO / "requirements.txt")
    assert core and not core & {"torch", "transformers", "mmengine-lite", "onnxsim", "torchvision"}
    assert "torch" in _requirement_names(REPO / "requirements-export.txt")
    assert "--core" in (REPO / "scripts" / "setup.sh").read_text()


def _python(code: str, cwd=REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(IMPORT_PATH)}
    # the bootstrap first, as every entry script does: with `-c` the working directory (the repo) is on sys.path
    code = f"import runpy; runpy.run_path({str(BOOTSTRAP)!r})\n" + code
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


def test_the_suite_imports_without_exposing_datasets():
    res = _python("import importlib.util, common, models.rtmdet\n"
                  "spec = importlib.util.find_spec('datasets')\n"
                  f"assert spec is None or not any(p.startswith({str(REPO)!r}) for p in "
                  "(spec.submodule_search_locations or [spec.origin or ''])), spec\n"
                  "print('ok')")
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_suite_env_prints_every_runtime(capsys):
    res = run_script("scripts/suite", "env", "--json", timeout=120)
    assert res.returncode == 0, res.stderr
    rows = {r["backend"]: r for r in json.loads(res.stdout)}
    assert set(rows) == {"onnxruntime", "igie", "tvm", "openvino", "replay"}
    assert rows["onnxruntime"]["available"] and rows["onnxruntime"]["capabilities"]["reference"]
    assert not rows["igie"]["available"] and rows["igie"]["why_not"]      # no IGIE SDK where this is tested
    from common.cli import print_env
    assert print_env(as_json=False) == 0
    text = capsys.readouterr().out
    assert "onnxruntime" in text and "why not:" in text
