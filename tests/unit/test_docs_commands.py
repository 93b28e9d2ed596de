"""Every command written in README.md and docs/*.md is parsed by the real command's own argument parser, so a
flag that a doc names and the code lacks (or a renamed script) fails here. Placeholders (`[--opt X]`, `...`,
`<what>`) stand for values the reader fills in; commands of other programs are not checked."""
from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

from helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_SCRIPT = re.compile(r"(?:^|/)(scripts/(?:compare|build_engine|regress|bench_\w+|serial_reference)\.py|"
                     r"datasets/prepare\.py|models/\w+/export\.py)$")
_MODEL_SCRIPT = re.compile(r"models/(\w+)/scripts/infer_\1_(\w+)_(accuracy|performance)\.sh$")


def fenced_commands(text: str) -> list[str]:
    """Shell command lines inside ``` fences: continuation lines joined, comments dropped, `a && b` split. In a
    fence that shows `$ ` prompts only the prompted lines are commands (the rest is their output)."""
    out, inside, pending, prompted = [], False, "", False
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            inside, pending = not inside, ""
            if inside:
                end = next((j for j in range(i + 1, len(lines)) if lines[j].lstrip().startswith("```")), len(lines))
                prompted = any(ln.lstrip().startswith("$ ") for ln in lines[i + 1:end])
            continue
        if not inside:
            continue
        line = re.sub(r"(^|\s+)#(\s.*)?$", "", line.strip())
        if prompted and not pending:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        out += [part.strip() for part in pending.split("&&") if part.strip()]
        pending = ""
    return out


def _words(command: str) -> list[str]:
    """The command's words: optional groups ([--x X]) and ellipses dropped, <placeholders> filled."""
    text = command
    while (shorter := re.sub(r"\[[^\[\]]*\]", " ", text)) != text:  # nested groups, innermost first
        text = shorter
    text = re.sub(r"<[^<>]*>", "PLACEHOLDER", text)
    try:
        words = shlex.split(text)
    except ValueError:   # prose in a layout block ("the model's spec"): not a command, split it plainly
        words = text.split()
    return [a for a in words if a not in ("...", "…") and not a.endswith("...")]


class _Parsed(Exception):
    pass


def _parse_only(monkeypatch, argv: list[str], run):
    """Run `run()` with sys.argv = argv until its parser has parsed: a parse error is SystemExit(2)."""
    real = argparse.ArgumentParser.parse_args

    def parse(self, args=None, namespace=None):
        real(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse)
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(_Parsed):
        run()


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"_doc_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_command(command: str, monkeypatch) -> str | None:
    """Parse one documented command; the program's name when it is one of the suite's, else None."""
    words = _words(command)
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words = words[1:]  # environment assignments
    if words and words[0] in ("bash", "python", "python3") or (words and words[0].endswith("/python")):
        words = words[1:]
    if not words:
        return None
    program, args = words[0], words[1:]
    if (m := _MODEL_SCRIPT.search(program)):
        from common.cli import main
        _parse_only(monkeypatch, ["suite"], lambda: main([m.group(3), "--model", m.group(1), "--precision",
                                                          m.group(2), *args]))
        return program
    if program.endswith("scripts/suite"):
        from common.cli import main
        _parse_only(monkeypatch, ["suite"], lambda: main(args))
        return program
    if (m := _SCRIPT.search(program)):
        module = _load(REPO / m.group(1))
        _parse_only(monkeypatch, [program, *args], lambda: module.main())
        return program
    if program == "scripts/setup.sh":
        allowed = {"--core", "--export", "--tvm", "--test"}
        assert set(args) <= allowed, f"setup.sh takes {allowed}, the doc says {args}"
        return program
    return None


def _all_commands():
    return [pytest.param(doc, cmd, id=f"{doc.name}:{i}") for doc in DOCS
            for i, cmd in enumerate(fenced_commands(doc.read_text()))]


@pytest.mark.parametrize("doc,command", _all_commands())
def test_documented_command_parses(doc, command, monkeypatch):
    try:
        check_command(command, monkeypatch)
    except SystemExit as exc:
        if exc.code != 0:   # 0: --version / --help, answered by the parser itself
            pytest.fail(f"{doc.name}: `{command}` is refused by its parser (exit {exc.code})")


def test_the_check_catches_a_drifted_flag(monkeypatch):
    with pytest.raises(SystemExit):
        check_command("bash models/rtmdet/scripts/infer_rtmdet_fp16_accuracy.sh --no-such-flag 3", monkeypatch)
    with pytest.raises(SystemExit):
        check_command("scripts/compare.py --model rtmdet --imagez 4", monkeypatch)
    assert check_command("scripts/compare.py --model rtmdet [--variant V] --images 4 ...", monkeypatch)
    assert check_command("ls -la", monkeypatch) is None


def test_the_readme_commands_are_found():
    found = fenced_commands((REPO / "README.md").read_text())
    assert any("infer_rtmdet_fp16_accuracy.sh" in c for c in found)
    assert any("pytest" in c for c in found)


# Documented commands that need no data, model or device: run for real (in-process), not only parsed; each must
# exit 0 as the docs show it. The long ones (accuracy / performance / regress runs) are parsed only, above; the
# walk-through of docs/bring-your-own-detector.md runs in full in tests/realdata/test_bring_your_own_detector.py.
_RUNNABLE = re.compile(r"scripts/suite (env|runs|--version)\b|scripts/regress\.py run --list\b")


def _runnable_commands():
    return [pytest.param(doc, cmd, id=f"{doc.name}:{i}") for doc in DOCS
            for i, cmd in enumerate(fenced_commands(doc.read_text())) if _RUNNABLE.search(cmd)]


@pytest.mark.parametrize("doc,command", _runnable_commands())
def test_documented_commands_that_need_no_data_exit_as_documented(doc, command, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)   # `suite runs` reads ./results: a fresh directory has none
    words = _words(command)
    program, args = words[0], words[1:]
    if program.endswith("scripts/suite"):
        from common.cli import main
        try:
            code = main(args)
        except SystemExit as exc:   # --version exits through argparse
            code = exc.code
    else:
        monkeypatch.setattr(sys, "argv", [program, *args])
        code = _load(REPO / "scripts" / "regress.py").main(args)
    assert code == 0, f"{doc.name}: `{command}` exited {code}"


def test_the_runnable_commands_are_found():
    assert len(_runnable_commands()) >= 3


# The walk (tests/realdata/test_docs_walk.py executes it): every documented command is on exactly one of its
# lists, run or skipped with a reason; checked here without data, so a command added to a doc and to neither list
# fails every tier.
from docs_walk import WALK, all_commands, documented_commands, plan, shell_lines  # noqa: E402


def test_every_documented_command_is_walked_or_skipped_with_a_reason():
    planned, unlisted, ambiguous = plan(all_commands())
    assert not unlisted, "documented commands on no list of tests/docs_walk.py:\n" + "\n".join(map(str, unlisted))
    assert not ambiguous, "commands matching several entries:\n" + "\n".join(map(str, ambiguous))
    used = {id(e) for _, e in planned}
    assert [e.pattern for e in WALK if id(e) not in used] == []      # no entry for a command no doc has any more
    for c, e in planned:
        if not e.skip:
            shell_lines(c, e, _FAKE_CTX)       # every `...` has its filling, every placeholder a value
    ran = [c for c, e in planned if not e.skip]
    assert len(ran) >= 25 and len(planned) - len(ran) <= 25


_FAKE_CTX = {k: f"/ctx/{k}" for k in ("shared", "coco", "calib", "held_apart", "onnx", "dyn_onnx", "p2", "work",
                                      "sim_igie", "python", "rtmdet_tiny")}


def test_a_planted_command_on_no_list_is_found(tmp_path):
    doc = tmp_path / "planted.md"
    doc.write_text("Text.\n\n```bash\nscripts/suite env\nscripts/suite frobnicate --all   # exit 2\n```\n\n"
                   "```\n$ scripts/regress.py run --list --onnx rtmdet=/data/rtmdet_nano.onnx\nsome output\n```\n"
                   "```yaml\nkey: value\n```\n")
    commands = documented_commands(doc)
    assert [(c.text, c.exit, c.line) for c in commands] == [
        ("scripts/suite env", 0, 4), ("scripts/suite frobnicate --all", 2, 5),
        ("scripts/regress.py run --list --onnx rtmdet=/data/rtmdet_nano.onnx", 0, 9)]
    _, unlisted, _ = plan(commands)
    assert [c.text for c in unlisted] == ["scripts/suite frobnicate --all"]


def test_documented_exit_codes_are_read():
    byod = {c.text.split()[-1]: c.exit for c in all_commands() if c.doc == "bring-your-own-detector.md"
            and c.text.startswith("scripts/regress.py run")}
    assert byod == {"mydet/run1": 0, "mydet/run2": 1}


def test_the_skip_reasons_cite_tests_that_exist():
    import re as _re
    cited = {p for e in WALK for p in _re.findall(r"tests/[\w/]+\.py", e.skip)}
    assert cited and all((REPO / p).is_file() for p in cited), sorted(p for p in cited if not (REPO / p).is_file())
