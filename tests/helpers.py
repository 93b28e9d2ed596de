"""Small helpers shared by the tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "scripts" / "suite"


def run_script(script, *args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run a suite bash script (path relative to the repo) and capture its output."""
    # the scripts run under this interpreter, whichever one runs pytest (scripts/suite honours $PYTHON)
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(REPO / script), *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout)
