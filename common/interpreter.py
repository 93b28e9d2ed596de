"""Entry scripts work from any shell after set-up: a script started by an interpreter that lacks the suite's
packages (`#!/usr/bin/env python3`, or plain `python3 scripts/compare.py`) re-runs itself under the repo's
.venv. An interpreter that has them (a vendor SDK's, $PYTHON) is kept. Standard library only."""
from __future__ import annotations

import importlib.util
import os
import sys

from common import REPO_ROOT

NEEDED = ("numpy", "cv2", "onnxruntime", "yaml")


def use_project_python() -> None:
    if all(importlib.util.find_spec(m) is not None for m in NEEDED):
        return
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    if venv.is_file() and os.environ.get("SUITE_REEXEC") != "1":
        os.environ["SUITE_REEXEC"] = "1"  # once: a broken venv must not loop
        os.execv(str(venv), [str(venv), *sys.argv])
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    where = f"{venv} lacks them: rerun" if venv.is_file() else f"there is no set-up .venv in {REPO_ROOT}: run"
    print(f"error: {sys.executable} lacks {', '.join(missing)} and {where} `bash scripts/setup.sh`", file=sys.stderr)
    sys.exit(2)
