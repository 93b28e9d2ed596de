"""Shared harness of the inference validation suite. Knows no model by name."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# What a process needs on sys.path to import the suite (common, models) without the repo root, whose
# `datasets/` folder would shadow Hugging Face's `datasets` package for transformers.
IMPORT_PATH = REPO_ROOT / ".importpath"
# The one bootstrap of the entry scripts: `python BOOTSTRAP accuracy ...` runs what `scripts/suite accuracy ...` runs
BOOTSTRAP = REPO_ROOT / "scripts" / "ixuca_suite.py"
SCHEMA_VERSION = 1
