"""Where a result came from: package versions, git commit, machine."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata

from common import REPO_ROOT

PACKAGES = (
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxsim",
    "opencv-python-headless",
    "pycocotools",
    "faster-coco-eval",
    "torch",
    "mmdet",
    "mmengine",
    "apache-tvm",
    "tvm",
    "transformers",
)


def _git(*args) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """Where a result came from: host, CPU, Python and the versions of the packages a figure depends on."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "packages": packages,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
    }


RUNTIME_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "apache-tvm", "tvm", "torch")


def suite_version() -> str:
    """The version in pyproject.toml (the suite runs from its checkout, not from an installed wheel)."""
    import re

    try:
        text = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)  # [project] is the file's only `version =`
    return m.group(1) if m else "unknown"


def version_text() -> str:
    """What `--version` prints: suite version, git commit (and whether the tree differs from it), Python, and the
    versions of the runtime packages installed (package metadata only: no runtime is imported)."""
    env = environment()
    commit = env["git_commit"] or "unknown (not a git checkout)"
    dirty = " with uncommitted changes" if env["git_dirty"] else ""
    runtimes = ", ".join(f"{n} {env['packages'][n]}" for n in RUNTIME_PACKAGES if n in env["packages"]) or "none"
    return (
        f"inference validation suite {suite_version()}, git {commit}{dirty}\n"
        f"python {env['python']} ({env['platform']})\nruntime packages: {runtimes}\n"
        "(`scripts/suite env`: which runtimes are usable here, and why not)"
    )
