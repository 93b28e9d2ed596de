"""The declared record types (common/record/types.py): the JSON Schemas shipped under docs/schemas/ are the ones the
declarations generate, the validator refuses what the declarations exclude, and what the suite builds passes."""
from __future__ import annotations

import json

import pytest

from common import REPO_ROOT
from common.errors import EXIT_RUNTIME
from common.record.schema import RecordError, check, problems
from common.record.types import (AccuracyBaselineEntry, CompareReport, built, check_compare_report, check_record,
                                 check_verdict, schemas)
from helpers import full_record

SCHEMA_DIR = REPO_ROOT / "docs" / "schemas"


def test_the_shipped_json_schemas_are_current():
    expected = schemas()
    shipped = {p.name for p in SCHEMA_DIR.glob("*.json")}
    assert shipped == set(expected), "docs/schemas/ holds other files than common/record/types.py declares"
    for name, schema in expected.items():
        assert json.loads((SCHEMA_DIR / name).read_text()) == schema, \
            f"docs/schemas/{name} is stale: regenerate with `PYTHONPATH=.importpath python -P -m common.record.types`"


def test_a_schema_says_what_the_validator_checks():
    s = schemas()["baseline-file.json"]["$defs"]["AccuracyBaselineEntry"]
    assert s["required"] == ["AP", "annotation", "images"]
    assert s["properties"]["AP"] == {"type": "number", "minimum": 0, "maximum": 1}
    assert s["properties"]["images"] == {"type": "integer", "minimum": 1}


@pytest.mark.parametrize("value, why", [(True, "expected an integer, got True"), (3.0, "expected an integer"),
                                        ("3", "expected an integer"), (-1, "below its minimum 1")])
def test_integers_are_integers(value, why):
    entry = {"AP": 0.5, "AP50": 0.7, "images": value, "annotation": "a.json"}
    (found,) = problems(entry, AccuracyBaselineEntry)
    assert found.startswith("images: ") and why in found


def test_nested_fields_are_named_by_their_path():
    report = {"images": [1, "2"], "tolerance": {}, "outputs": {"dets": {"nan": -1}}, "detections": {},
              "verdict": "maybe", "reasons": []}
    found = problems(report, CompareReport)
    assert found == ["images[1]: expected an integer, got '2'", "outputs.dets.nan: -1 is below its minimum 0",
                     "verdict: expected 'pass' or 'fail', got 'maybe'"]
    with pytest.raises(RecordError, match=r"r\.json: invalid compare report: images\[1\]: .* \(and 2 more\)") as ei:
        check_compare_report(report, "r.json")
    assert ei.value.field == "images[1]" and ei.value.exit_code == 2


def test_what_the_suite_builds_wrong_is_its_own_error_not_bad_input():
    with pytest.raises(Exception) as ei:
        built(check_record, {**full_record("performance"), "batch_size": 0})
    assert ei.value.exit_code == EXIT_RUNTIME and "batch_size" in str(ei.value)


def test_records_of_both_kinds_and_verdicts_pass():
    for kind in ("accuracy", "performance"):
        check_record(full_record(kind))
    stopped = full_record("accuracy", metrics={})
    with pytest.raises(RecordError, match="metrics.AP: missing"):
        check_record(stopped)
    stopped["dataset"]["stopped_by"] = "preflight"     # the pre-flight stopped it: no metric is the truth
    check_record(stopped)
    case = {"id": "m/v/b/fp32/bs1/accuracy", "model": "m", "variant": "v", "backend": "b", "precision": "fp32",
            "batch_size": 1, "kind": "accuracy"}
    check_verdict({"id": case["id"], "case": case, "status": "pass", "values": {"AP": 0.5}, "notes": [], "gaps": []})
    with pytest.raises(RecordError, match="values.fps: expected a finite number, got nan"):
        check_verdict({"id": case["id"], "case": case, "status": "pass", "values": {"fps": float("nan")},
                       "notes": [], "gaps": []})


def test_unsupported_declarations_are_a_programming_error():
    with pytest.raises(TypeError):
        check(1, set)
