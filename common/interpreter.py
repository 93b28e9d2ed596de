"""Entry scripts work from any shell after set-up: a script started by an interpreter that lacks the suite's
packages (`#!/usr/bin/env python3`, or plain `python3 scripts/compare.py`) re-runs itself under the repo's
.venv. An interpreter that has them (a vendor SDK's, $PYTHON) is kept. Standard library only."""

from __future__ import annotations

import importlib.util
import os
import sys

from common import REPO_ROOT

NEEDED = ("numpy", "cv2", "onnxruntime", "yaml")


def _missing(needed) -> list[str]:
    return [m for m in needed if importlib.util.find_spec(m) is None]


def use_project_python(needed: tuple = NEEDED) -> None:
    """Re-run the script under the repo's .venv when this interpreter lacks `needed`; exit 2 saying so when
    that is not possible. An export script adds torch: its own layer (requirements-export.txt)."""
    if not _missing(needed):
        return
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    if venv.is_file() and os.environ.get("SUITE_REEXEC") != "1":
        os.environ["SUITE_REEXEC"] = "1"  # once: a broken venv must not loop
        # the script itself, not sys.argv[0]: runpy.run_path (the bootstrap of datasets/ and models/ scripts) puts
        # the file it runs there while it runs, and re-running that would start the suite's CLI instead
        script = getattr(sys.modules.get("__main__"), "__file__", None) or sys.argv[0]
        os.execv(str(venv), [str(venv), script, *sys.argv[1:]])
    layer = " --export" if "torch" in _missing(needed) and not _missing(NEEDED) else ""
    where = f"{venv} lacks them: rerun" if venv.is_file() else f"there is no set-up .venv in {REPO_ROOT}: run"
    print(
        f"error: {sys.executable} lacks {', '.join(_missing(needed))} and {where} `bash scripts/setup.sh{layer}`",
        file=sys.stderr,
    )
    sys.exit(2)


def require_packages(chosen_by: str) -> None:
    """Exit 2 with one line when the interpreter someone chose explicitly (`chosen_by`, e.g. $PYTHON) lacks the
    suite's packages: that choice is kept, never silently replaced by .venv, so it must be a clear error rather
    than an import traceback."""
    missing = _missing(NEEDED)
    if missing:
        print(
            f"error: {sys.executable} (chosen by {chosen_by}) lacks {', '.join(missing)}: unset it to use "
            f"{REPO_ROOT / '.venv'}, or install the suite into that interpreter (`bash scripts/setup.sh`)",
            file=sys.stderr,
        )
        sys.exit(2)
