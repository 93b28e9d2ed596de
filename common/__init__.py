"""Shared harness of the inference validation suite. Knows no model by name."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parent.parent
# What a process needs on sys.path to import the suite (common, models) without the repo root, whose
# `datasets/` folder would shadow Hugging Face's `datasets` package for transformers.
IMPORT_PATH = REPO_ROOT / ".importpath"
# The one bootstrap of the entry scripts: `python BOOTSTRAP accuracy ...` runs what `scripts/suite accuracy ...` runs
BOOTSTRAP = REPO_ROOT / "scripts" / "ixuca_suite.py"
SCHEMA_VERSION = 1


def load_file_module(name: str, path: Path) -> ModuleType:
    """The Python file at `path` run as module `name` (registered in sys.modules, which dataclasses and pickling
    look a module up in): a model family's decode.py or export.py, a datasets/ module, a tool's own source file."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
