"""Shared harness of the inference validation suite. Knows no model by name."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_VERSION = 1
