"""common/ is layered: no import cycle between its modules, nor between its stage folders (function-level imports count)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the suite modules it imports (`common.x.y`), from every import statement in the file."""
    graph: dict[str, set[str]] = {}
    for path in sorted((root / "common").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name.split(".") if parts[-1] == "__init__" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    candidate = f"{target}.{alias.name}"
                    module_file = root / (candidate.replace(".", "/") + ".py")
                    deps.add(candidate if module_file.exists() else target)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d.startswith("common.") and d != name}
    return graph


def stage_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same graph between stage folders (common/<stage>/) and top-level modules."""
    def stage(module: str) -> str:
        return module.split(".")[1] if "." in module else module
    out: dict[str, set[str]] = {}
    for module, deps in graph.items():
        out.setdefault(stage(module), set()).update(stage(d) for d in deps if stage(d) != stage(module))
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_modules():
    graph = import_graph(REPO)
    assert "common.harness.runs" in graph and graph["common.harness.runs"], "the scan found the drivers' imports"
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_import_cycle_between_stage_folders():
    stages = stage_graph(import_graph(REPO))
    assert {"data", "decode", "evaluate", "runtime", "config", "compare", "harness", "record", "ci"} <= set(stages)
    assert find_cycle(stages) is None, " -> ".join(find_cycle(stages))


def test_a_planted_cycle_is_found(tmp_path):
    """The scan must see a cycle made by relative and function-level imports across two stage folders."""
    for stage, body in {"alpha": "from ..beta.b import g\n", "beta": "def g():\n    from common.alpha import a\n"}.items():
        folder = tmp_path / "common" / stage
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text("")
        (folder / ("a.py" if stage == "alpha" else "b.py")).write_text(body)
    (tmp_path / "common" / "__init__.py").write_text("")
    graph = import_graph(tmp_path)
    assert find_cycle(graph) == ["common.alpha.a", "common.beta.b", "common.alpha.a"]
    assert find_cycle(stage_graph(graph)) == ["alpha", "beta", "alpha"]


ENTRY_DIRS = ("scripts", "datasets", "models")


def path_edits(root: Path) -> list[str]:
    """Entry scripts (files with a `__main__` block outside common/ and tests/) that edit sys.path themselves, or
    import the suite without loading the one bootstrap (scripts/ixuca_suite.py); and any `python -P` left in the
    shell scripts."""
    found = []
    for folder in ENTRY_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            text = path.read_text()
            if path.name == "ixuca_suite.py" or "__main__" not in text:
                continue
            for node in ast.walk(ast.parse(text, str(path))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("insert", "append", "extend")
                        and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "path"
                        and isinstance(node.func.value.value, ast.Name) and node.func.value.value.id == "sys"):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: sys.path.{node.func.attr}")
            if "ixuca_suite" not in text and any(f"{kw} {pkg}" in text for kw in ("import", "from")
                                                 for pkg in ("common", "models")):
                found.append(f"{path.relative_to(root)}: does not load the bootstrap (import ixuca_suite)")
    for path in sorted(list((root / "scripts").glob("*")) + list((root / "models").rglob("*.sh")) + [root / ".ci" / "run"]):
        if path.is_file() and path.suffix in ("", ".sh") and " -P " in path.read_text():
            found.append(f"{path.relative_to(root)}: python -P (needs Python >= 3.11; the bootstrap does its work)")
    return found


def test_entry_scripts_use_the_one_bootstrap_and_no_path_edits():
    assert path_edits(REPO) == []


def test_a_planted_path_edit_is_found(tmp_path):
    for folder in ENTRY_DIRS:
        (tmp_path / folder).mkdir()
    (tmp_path / "scripts" / "tool.py").write_text(
        "import sys\nsys.path.insert(0, '.importpath')\nimport common\nif __name__ == '__main__':\n    pass\n")
    (tmp_path / "scripts" / "standalone.py").write_text("import json\nif __name__ == '__main__':\n    pass\n")
    (tmp_path / "scripts" / "suite").write_text('exec "$PYTHON" -P -m common.cli "$@"\n')
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "run").write_text("true\n")
    assert path_edits(tmp_path) == ["scripts/tool.py:2: sys.path.insert",
                                    "scripts/tool.py: does not load the bootstrap (import ixuca_suite)",
                                    "scripts/suite: python -P (needs Python >= 3.11; the bootstrap does its work)"]
