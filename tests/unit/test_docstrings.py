"""Every public function of common/ that another folder calls has a docstring: the stages' interfaces explain
themselves. "Calls" is read from the source: the function's name used (called, imported or taken as an attribute)
in a file of another stage folder (common/<stage>/), of scripts/, models/ or datasets/."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CALLERS = ("common", "scripts", "models", "datasets")


def _folder(root: Path, path: Path) -> str:
    parts = path.relative_to(root).parts
    return "/".join(parts[:2]) if parts[0] == "common" and len(parts) > 2 else parts[0]


def _public_functions(root: Path):
    for path in sorted((root / "common").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith("_"):
                yield path, node
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                for member in node.body:
                    if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef) and not member.name.startswith("_"):
                        yield path, member


def _names_used(root: Path) -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for folder in CALLERS:
        for path in sorted((root / folder).rglob("*")):
            if not path.is_file() or not (path.suffix == ".py" or (folder == "scripts" and path.suffix == "")):
                continue
            try:
                tree = ast.parse(path.read_text(), str(path))
            except (SyntaxError, UnicodeDecodeError):
                continue     # scripts/suite and setup.sh are bash
            for node in ast.walk(tree):
                names = ([node.id] if isinstance(node, ast.Name) else [node.attr] if isinstance(node, ast.Attribute)
                         else [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else [])
                for name in names:
                    used.setdefault(name, set()).add(_folder(root, path))
    return used


def undocumented(root: Path) -> list[str]:
    used = _names_used(root)
    return [f"{path.relative_to(root)}:{node.lineno} {node.name}" for path, node in _public_functions(root)
            if ast.get_docstring(node) is None and used.get(node.name, set()) - {_folder(root, path)}]


def test_public_functions_other_folders_call_have_docstrings():
    assert undocumented(REPO) == []


def test_a_planted_undocumented_interface_is_found(tmp_path):
    (tmp_path / "common" / "data").mkdir(parents=True)
    (tmp_path / "common" / "data" / "load.py").write_text(
        "def read_thing(p):\n    return p\n\n\ndef documented(p):\n    \"\"\"Why.\"\"\"\n    return p\n\n\n"
        "def only_here(p):\n    return read_thing(p)\n")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "tool.py").write_text("from common.data.load import read_thing, documented\n")
    assert undocumented(tmp_path) == ["common/data/load.py:1 read_thing"]
