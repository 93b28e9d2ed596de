"""Only the drivers see a RunConfig (issue 33): every other module of common/ takes the typed request of its stage
(common/harness/requests.py, common/data/coco.DatasetRequest). Checked on the source: no other module names
RunConfig (import, annotation, call), and no function elsewhere reads a run option off a parameter (`cfg.batch_size`
on a `cfg` it was handed)."""
from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The code that builds a RunConfig or reads one: the drivers and the command lines that call them.
DRIVERS = {
    "common/harness/runs.py",  # run_accuracy, run_performance
    "common/harness/devices.py",  # run_on_devices: a worker's command line is the RunConfig's flags
    "common/harness/compare_command.py",  # compare.py's command
    "common/harness/loadgen_run.py",  # the LoadGen command
    "common/harness/requests.py",  # where a RunConfig becomes the stages' requests
    "common/config/options.py",  # where it is declared and built from flags
    "common/cli.py",
    "common/ci/regress.py",
}
# In the drivers, the functions that take the RunConfig: the entry points and the resolution of requests.
DRIVER_FUNCTIONS = {
    "run_accuracy", "_run_accuracy", "run_performance",  # runs.py
    "run_on_devices", "plan", "_workers_per_device", "_node_summary",  # devices.py
    "run_compare", "run_loadgen",
    "dataset_request", "outputs_request", "engine_request", "stage_requests", "request_key",  # requests.py
    "config_from_args", "to_flags", "case_config",  # building it from flags, and back
}


def run_options() -> set[str]:
    from common.config.options import RunConfig
    return {f.name for f in fields(RunConfig)}


def _mentions_runconfig(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and n.id == "RunConfig":
            return True
        if isinstance(n, ast.Attribute) and n.attr == "RunConfig":
            return True
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and re.search(r"\bRunConfig\b", n.value):
            return True  # a string annotation
    return False


def violations(root: Path, options: set[str]) -> list[str]:
    """Where RunConfig reaches past the drivers: `path:line: what`."""
    found = []
    for path in sorted((root / "common").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(), rel)
        driver = rel in DRIVERS
        for node in ast.walk(tree):
            if not driver and isinstance(node, ast.ImportFrom):
                if any(a.name == "RunConfig" for a in node.names):
                    found.append(f"{rel}:{node.lineno}: imports RunConfig")
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if driver and node.name in DRIVER_FUNCTIONS:
                continue
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            for a in args:
                if a.annotation is not None and _mentions_runconfig(a.annotation):
                    found.append(f"{rel}:{node.lineno}: {node.name}() takes a RunConfig ({a.arg})")
            names = {a.arg for a in args}
            read = sorted({n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
                           and isinstance(n.value, ast.Name) and n.value.id in names & {"cfg", "config", "run_cfg"}
                           and n.attr in options})
            if read:
                found.append(f"{rel}:{node.lineno}: {node.name}() reads run options off its argument: "
                             + ", ".join(read))
    return found


def test_only_the_drivers_see_a_runconfig():
    found = violations(REPO, run_options())
    assert found == [], "\n".join(found)


def test_the_scan_sees_every_way_in(tmp_path):
    """Planted: a stage that imports RunConfig, one whose argument is annotated with it (string annotation too), one
    that reads run options off an untyped `cfg`, and the same function in a driver module (allowed only for the
    driver's own entry points)."""
    stage = tmp_path / "common" / "data"
    stage.mkdir(parents=True)
    (stage / "planted.py").write_text(
        "from common.config.options import RunConfig\n"
        "def load(cfg: RunConfig, n: int):\n    return n\n"
        "def load2(cfg: 'RunConfig'):\n    return 0\n"
        "def calibrate(calib_dir, variant, cfg):\n    return cfg.dataset_dir, cfg.calib_images, cfg.get('x')\n"
        "def decode(outputs, cfg: dict):\n    return cfg.get('dets'), cfg['labels']\n"
    )
    harness = tmp_path / "common" / "harness"
    harness.mkdir()
    (harness / "runs.py").write_text(
        "def run_accuracy(cfg):\n    return cfg.batch_size\n"
        "def _helper(cfg, p):\n    return cfg.precision\n"
    )
    assert violations(tmp_path, run_options()) == [
        "common/data/planted.py:1: imports RunConfig",
        "common/data/planted.py:2: load() takes a RunConfig (cfg)",
        "common/data/planted.py:4: load2() takes a RunConfig (cfg)",
        "common/data/planted.py:6: calibrate() reads run options off its argument: calib_images, dataset_dir",
        "common/harness/runs.py:3: _helper() reads run options off its argument: precision",
    ]
