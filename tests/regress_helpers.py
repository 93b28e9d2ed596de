"""Shared helpers of the regression-runner tests: call scripts/regress.py in-process (its cases still run in
their own processes) and read what a run directory holds."""
from __future__ import annotations

import importlib.util
import json
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("regress_script", REPO / "scripts" / "regress.py")
regress_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regress_script)

# Short timings: the tests check the verdict logic, not the speed of a CPU.
FAST_PERF = ["--warmup", "0.1", "--min-duration", "0.3", "--min-iters", "5"]


def regress(*argv) -> int:
    argv = [str(a) for a in argv]
    if argv[:1] == ["run"] and "--threads" not in argv:
        argv += ["--threads", "1"]     # the cases share the cores with the other test workers (tests/conftest.py)
    return regress_script.main(argv)


def verdicts(run_dir: Path) -> dict:
    data = json.loads((run_dir / "verdicts.json").read_text())
    return {v["id"]: v for v in data["verdicts"]}


def junit_cases(run_dir: Path) -> dict:
    """{classname.name: (outcome tag or 'pass', message)} parsed back from junit.xml (tag: failure, error or
    skipped)."""
    root = ET.parse(run_dir / "junit.xml").getroot()
    assert root.tag == "testsuites"
    out = {}
    for suite in root.findall("testsuite"):
        tcs = suite.findall("testcase")
        assert int(suite.get("tests")) == len(tcs)
        assert int(suite.get("failures")) == sum(tc.find("failure") is not None for tc in tcs)
        assert int(suite.get("errors")) == sum(tc.find("error") is not None for tc in tcs)
        assert int(suite.get("skipped")) == sum(tc.find("skipped") is not None for tc in tcs)
        for tc in tcs:
            bad = next((tc.find(t) for t in ("failure", "error", "skipped") if tc.find(t) is not None), None)
            out[f"{tc.get('classname')}.{tc.get('name')}"] = ((bad.tag, bad.get("message")) if bad is not None
                                                              else ("pass", None))
    return out
