"""The one bootstrap of the suite's entry scripts: `import ixuca_suite` as a script's first suite import.

An entry script in scripts/ finds this module beside it (Python puts a script's own folder first on sys.path);
one elsewhere (datasets/prepare.py, models/*/export.py) loads it by path with `runpy.run_path`. It
- puts `.importpath` (links to common/ and models/ only) first on sys.path;
- takes the repo root and an empty entry (the working directory) off sys.path: the root's `datasets/` folder
  would otherwise be importable as a namespace package named like Hugging Face's `datasets`, and transformers
  would take it for that library (what `python -P` did, without needing Python >= 3.11);
- re-runs the script under the repo's .venv when the interpreter lacks the suite's packages
  (common/interpreter.py).
The installed distribution claims only this module's name (`ixuca_suite`), never bare `common` or `models`; its
`suite` console command is `main` here. Standard library only, Python >= 3.10.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMPORT_PATH = ROOT / ".importpath"


def _is_root(entry: str) -> bool:
    try:
        return Path(entry or os.getcwd()).resolve() == ROOT
    except OSError:
        return False


def bootstrap(extra_needs: tuple = (), reexec: bool = True) -> None:
    """Make the suite importable in this process and nothing beside it (idempotent); with `reexec`, re-run the
    script under the repo's .venv when this interpreter lacks the suite's packages (and `extra_needs`)."""
    sys.path[:] = [p for p in sys.path if p != str(IMPORT_PATH) and not _is_root(p)]
    sys.path.insert(0, str(IMPORT_PATH))
    if reexec:
        from common.interpreter import NEEDED, use_project_python

        use_project_python(NEEDED + tuple(extra_needs))


def datasets_module(name: str):
    """A module of datasets/ (not a package, and never on sys.path: see above), loaded by its file path."""
    from common import load_file_module

    return load_file_module(f"_suite_datasets_{name}", ROOT / "datasets" / f"{name}.py")


def main() -> int:
    """scripts/suite and the `suite` console command. The interpreter scripts/suite chose ($PYTHON, else .venv)
    is kept: one clear line when it lacks the suite's packages, never a silent switch to another one. Ends the
    process the way common.cli does (exit_now): after an interrupt, no interpreter tear-down, during which a second
    SIGTERM would kill the process instead of being absorbed."""
    bootstrap(reexec=False)
    from common.interpreter import require_packages

    require_packages("$PYTHON" if os.environ.get("PYTHON") else "scripts/suite")
    from common.cli import exit_now
    from common.cli import main as cli_main

    exit_now(cli_main())
    return 0   # not reached


if __name__ == "__main__":   # scripts/suite runs this file: `python scripts/ixuca_suite.py accuracy ...`
    sys.exit(main())
else:   # imported by an entry script, or loaded with runpy.run_path(..., init_globals={"EXTRA_NEEDS": (...)})
    bootstrap(globals().get("EXTRA_NEEDS", ()))
