"""Every number the regression runner reads back (baseline entries, history rows, result records) is checked
before a verdict uses it: each test plants one bad value in a file and sees it refused, naming the file and the
field, with the documented exit code (2: bad input or configuration) instead of a traceback or a false pass."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.ci.regress import EXIT_CONFIG, load_outcomes
from common.ci.verdicts import judge
from common.errors import EXIT_BAD_INPUT, InputError, RuntimeFailure
from common.record.history import append_run, read_history
from common.record.results import write_record
from helpers import full_record
from regress_helpers import regress

RT = "onnxruntime-1.31.1"
RULES = {("m.yaml", "v"): {"relative": {"AP": 0.2}, "accuracy_noise": 2.5, "reference": {},
                           "reference_fraction": 0.99, "evaluation_annotation": None}}
ACC_KEY = "m/v/onnxruntime/fp32/bs1/accuracy"
FPS_KEY = "m/v/onnxruntime/fp32/bs1"


def _case(kind):
    c = {"model": "m", "variant": "v", "backend": "onnxruntime", "precision": "fp32", "batch_size": 1,
         "kind": kind, "spec": "m.yaml", "annotation": None, "max_images": None, "onnx": None}
    c["id"] = f"m/v/onnxruntime/fp32/bs1/{kind}"
    return c


def _acc(ap=0.40, images=100):
    return full_record("accuracy", metrics={"AP": ap, "AP50": ap + 0.2},
                       dataset={"images_dir": "/d/images", "annotation": "/d/annotations/ann.json",
                                "num_images": images})


def _outcome(kind, record):
    return {"case": _case(kind), "status": "ok", "records": [record], "error": None, "duration_s": 1.0}


def _baseline(root: Path, entries: dict) -> Path:
    path = root / "cpu" / f"{RT}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    # json.dumps writes NaN as the bare token NaN, which Python's json reads back as a float
    path.write_text(json.dumps({"device": "cpu", "sdk": RT, "entries": entries}))
    return path


GOOD_ACC = {"AP": 0.534, "AP50": 0.734, "images": 100, "annotation": "ann.json"}


@pytest.mark.parametrize("field, value, why", [
    ("AP", float("nan"), "expected a finite number, got nan"),
    ("AP", "0.534", "expected a number, got '0.534'"),
    ("AP", None, "expected a number, got None"),
    ("AP50", 1.5, "above its maximum 1"),
    ("images", "100", "expected an integer, got '100'"),
    ("images", 0, "below its minimum 1"),
])
def test_a_bad_accuracy_baseline_figure_is_refused_naming_file_and_field(tmp_path, field, value, why):
    path = _baseline(tmp_path, {ACC_KEY: {**GOOD_ACC, field: value}})
    # 0.40 against 0.534 is a 13-point regression: a NaN baseline used to pass it, "100" to call it incomparable
    with pytest.raises(InputError) as ei:
        judge([_outcome("accuracy", _acc(0.40))], RULES, tmp_path)
    text = str(ei.value)
    assert str(path) in text and f"entries.{ACC_KEY}.{field}" in text and why in text, text
    assert ei.value.exit_code == EXIT_BAD_INPUT


@pytest.mark.parametrize("entry, field", [({"fps": "fast", "cov": 0.01}, "fps"), ({"fps": None}, "fps"),
                                          ({"fps": 100.0, "cov": float("inf")}, "cov"), ({"cov": 0.01}, "fps")])
def test_a_bad_fps_baseline_figure_is_refused(tmp_path, entry, field):
    path = _baseline(tmp_path, {FPS_KEY: entry})
    with pytest.raises(InputError) as ei:
        judge([_outcome("performance", full_record("performance"))], RULES, tmp_path)
    assert str(path) in str(ei.value) and f"entries.{FPS_KEY}.{field}" in str(ei.value), str(ei.value)


@pytest.mark.parametrize("value, why", [(float("nan"), "expected a finite number"), ("12", "expected a number")])
def test_a_bad_loadgen_baseline_figure_is_refused(tmp_path, value, why):
    from common.ci.baselines import read_baseline
    key = "m/v/onnxruntime/fp32/bs1/loadgen-Offline"
    path = _baseline(tmp_path, {key: {"metric": "qps", "value": value, "scenario": "Offline"}})
    with pytest.raises(InputError) as ei:
        read_baseline(path)
    assert str(path) in str(ei.value) and f"entries.{key}.value: {why}" in str(ei.value), str(ei.value)


def _fake_run(d: Path, kind: str, record) -> Path:
    (d / "cases").mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"run_id": "r1", "shard": None, "cases": [_case(kind)["id"]]}))
    rec = d / "records" / "c" / "r.json"
    rec.parent.mkdir(parents=True)
    rec.write_text(record if isinstance(record, str) else json.dumps(record))
    (d / "cases" / "c.json").write_text(json.dumps({"case": _case(kind), "status": "ok",
                                                    "records": [str(rec.relative_to(d))], "error": None,
                                                    "duration_s": 1}))
    return rec


def test_the_regress_report_exits_2_on_a_nan_baseline_never_0(tmp_path, monkeypatch, capsys):
    import common.ci.regress as rg
    monkeypatch.setattr(rg, "case_rules", lambda spec, variant: RULES[("m.yaml", "v")])
    _fake_run(tmp_path / "run", "accuracy", _acc(0.40))
    path = _baseline(tmp_path / "b", {ACC_KEY: {**GOOD_ACC, "AP": float("nan")}})
    assert regress("report", tmp_path / "run", "--baselines", tmp_path / "b", "--no-plots") == EXIT_CONFIG
    err = capsys.readouterr().err
    assert str(path) in err and "AP: expected a finite number" in err and "Traceback" not in err


@pytest.mark.parametrize("plant, field", [
    (lambda r: r["metrics"].update(AP=float("nan")), "metrics.AP"),
    (lambda r: r["metrics"].update(AP="0.5"), "metrics.AP"),
    (lambda r: r["dataset"].update(num_images="100"), "dataset.num_images"),
    (lambda r: r.pop("device"), "device"),
    (lambda r: r.update(schema_version=2), "schema_version 2"),
    (lambda r: r.pop("schema_version"), "schema_version"),
    (lambda r: r["metrics"].pop("AP"), "metrics.AP"),
])
def test_a_bad_result_record_is_refused_on_read(tmp_path, plant, field):
    record = _acc()
    plant(record)
    rec = _fake_run(tmp_path, "accuracy", record)
    with pytest.raises(InputError) as ei:
        load_outcomes(tmp_path)
    assert str(rec) in str(ei.value) and field in str(ei.value), str(ei.value)


def test_an_invalid_record_is_never_written(tmp_path):
    record = _acc()
    record["metrics"]["AP"] = float("nan")
    with pytest.raises(RuntimeFailure, match="metrics.AP: expected a finite number"):
        write_record(tmp_path, record)
    assert not list(tmp_path.iterdir())


# --- history ------------------------------------------------------------------------------------------------------

def _history(tmp_path, n=2) -> Path:
    hist = tmp_path / "h.jsonl"
    for i in range(n):
        append_run(hist, f"run{i}", [{"id": _case("accuracy")["id"], "status": "pass"}],
                   {_case("accuracy")["id"]: [_acc(0.4 + i / 100)]})
    return hist


def test_a_truncated_last_history_line_is_skipped_with_a_warning(tmp_path, capsys):
    hist = _history(tmp_path)
    data = hist.read_bytes()
    hist.write_bytes(data + data.splitlines(keepends=True)[-1][:57])      # a crash in the middle of a write
    rows = read_history(hist)
    assert [r["run_id"] for r in rows] == ["run0", "run1"]
    assert f"{hist}: line 3 is truncated" in capsys.readouterr().err
    # the next report appends after the cut line, and the history stays readable
    append_run(hist, "run2", [{"id": _case("accuracy")["id"], "status": "pass"}], {_case("accuracy")["id"]: [_acc()]})
    assert [r["run_id"] for r in read_history(hist)] == ["run0", "run1", "run2"]


def test_a_malformed_history_line_in_the_middle_is_refused(tmp_path):
    hist = _history(tmp_path)
    lines = hist.read_text().splitlines(keepends=True)
    hist.write_text(lines[0][:40] + "\n" + lines[1])
    with pytest.raises(InputError, match="line 1 is not JSON") as ei:
        read_history(hist)
    assert str(hist) in str(ei.value)


@pytest.mark.parametrize("plant, field", [
    (lambda r: r["metrics"].update(AP="fast"), "metrics.AP"),
    (lambda r: r.update(run_id=7), "run_id"),
    (lambda r: r.update(status="great"), "status"),
    (lambda r: r.update(metrics=[0.5]), "metrics"),
    (lambda r: r.update(schema_version=9), "schema_version 9"),
])
def test_a_history_row_of_wrong_types_is_refused_naming_line_and_field(tmp_path, plant, field):
    hist = _history(tmp_path)
    lines = hist.read_text().splitlines()
    row = json.loads(lines[1])
    plant(row)
    hist.write_text(lines[0] + "\n" + json.dumps(row) + "\n")
    with pytest.raises(InputError) as ei:
        read_history(hist)
    assert f"{hist}:2" in str(ei.value) and field in str(ei.value), str(ei.value)


# --- spec numbers ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("old, new, field", [
    ("min: {AP: 0.30, AP50: 0.55}", "min: {AP: .nan, AP50: 0.55}", "min.AP"),
    ("min: {AP: 0.30, AP50: 0.55}", "min: {AP: '0.30', AP50: 0.55}", "min.AP"),
    ("pad_value: 114", "pad_value: .inf", "preprocess.pad_value"),
    ("mean: [103.53, 116.28, 123.675]", "mean: [.nan, 116.28, 123.675]", "preprocess.mean"),
    ("outputs: []                  #", "outputs: []\n      min_cosine: .nan  #", "fidelity.min_cosine"),
    ("relative: {AP: 0.2, AP50: 0.2}", "relative: {AP: .inf, AP50: 0.2}", "matrix.relative"),
    ("relative: {AP: 0.2, AP50: 0.2}", "relative: {AP: 0.2, AP50: 0.2}\n      accuracy_noise: .nan", "accuracy_noise"),
    ("    fidelity:", "    reference: {AP: '0.41'}\n    fidelity:", "reference.AP"),
    ("    fidelity:", "    reference: {AP: 41.0}\n    fidelity:", "reference.AP"),
])
def test_a_bad_number_in_a_spec_is_refused_naming_file_and_field(tmp_path, old, new, field):
    from common.ci.matrix import case_rules
    from common.config.specs import MODELS_DIR
    from common.errors import ConfigError
    text = (MODELS_DIR / "rtmdet" / "model.yaml").read_text()
    assert old in text
    path = tmp_path / "model.yaml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as ei:
        case_rules(str(path), "nano-person")    # the spec as the regression runner reads it, matrix included
    assert str(path) in str(ei.value) and field in str(ei.value), str(ei.value)
