import json

import pytest
import yaml

from common.errors import ConfigError
from common.record.results import check_targets, verdict_of, write_record
from helpers import full_record
from common.config.specs import COCO80_TO_91, MODELS_DIR, load_model, load_spec

BASE = {
    "schema": 1, "name": "toy",
    "variants": {"a": {"input": {"height": 64, "width": 64}, "preprocess": {"mean": [0, 0, 0], "std": [1, 1, 1]},
                       "output": {"convention": "end2end"}, "labels": "coco80",
                       "evaluation": {"annotation": "x.json"},
                       "targets": [{"backend": "onnxruntime", "precision": ["fp16", "fp32"], "min": {"AP": 0.3},
                                    "max": {"latency_p99_ms": 50}}]}},
}


def _write(tmp_path, doc):
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_every_shipped_spec_loads():
    for path in MODELS_DIR.glob("*/model.yaml"):
        spec = load_spec(path)
        assert spec.variants
    v = load_model("rtmdet").variant("nano-person")
    assert (v.height, v.width) == (320, 320) and v.label_map == (1,) and v.categories == (1,)


def test_a_good_spec(tmp_path):
    v = load_spec(_write(tmp_path, BASE)).variant()
    assert v.label_map == COCO80_TO_91 and len(v.label_map) == 80
    assert [t.precisions for t in v.targets_for("onnxruntime", "cpu", "fp16", 8)] == [("fp16", "fp32")]
    assert v.targets_for("igie", "mr-v100", "fp16", 8) == []


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d["variants"]["a"]["targets"][0]["min"].update(mAP=0.3), "variants.a.targets[0].min.mAP: unknown metric"),
    (lambda d: d["variants"]["a"]["targets"][0].update(precision="fp8"), "variants.a.targets[0].precision"),
    (lambda d: d["variants"]["a"]["targets"][0].update(minimum={"AP": 1}), "unknown keys ['minimum']"),
    (lambda d: d["variants"]["a"].pop("input"), "variants.a.input: missing"),
    (lambda d: d["variants"]["a"]["preprocess"].update(std=[1, 0, 1]), "must not contain 0"),
    (lambda d: d["variants"]["a"]["preprocess"].update(resize="squash"), "'squash' is not one of"),
    (lambda d: d["variants"]["a"].update(labels="coco81"), "unknown label map"),
    (lambda d: d.update(schema=2), "unsupported schema version"),
])
def test_spec_errors_name_the_file_and_the_field(tmp_path, mutate, needle):
    doc = json.loads(json.dumps(BASE))
    mutate(doc)
    path = _write(tmp_path, doc)
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_a_remembered_spec_equals_a_fresh_read_and_an_edit_is_read_again(tmp_path):
    from common.engine_cache import EngineCache
    cache = EngineCache(tmp_path / "cache")
    for path in MODELS_DIR.glob("*/model.yaml"):                      # anchors and aliases included
        assert load_spec(path, cache) == load_spec(path, cache) == load_spec(path)
    assert len(list((tmp_path / "cache" / "specs").iterdir())) == 2
    doc = json.loads(json.dumps(BASE))
    path = _write(tmp_path, doc)
    assert load_spec(path, cache).variant().targets[0].minimum == {"AP": 0.3}
    doc["variants"]["a"]["targets"][0]["min"]["AP"] = 0.9             # planted: an edited target
    path = _write(tmp_path, doc)
    assert load_spec(path, cache).variant().targets[0].minimum == {"AP": 0.9}
    doc["variants"]["a"]["targets"][0]["min"].update(mAP=0.3)          # and a misspelt one is still refused
    path = _write(tmp_path, doc)
    for _ in range(2):
        with pytest.raises(ConfigError, match="unknown metric"):
            load_spec(path, cache)
    path.write_text("variants: [unclosed")
    for _ in range(2):
        with pytest.raises(ConfigError, match="not valid YAML"):
            load_spec(path, cache)


def test_spec_not_yaml(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("variants: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec(path)


def test_target_checks():
    t = load_spec_targets()
    checks, reasons = check_targets({"AP": 0.31, "latency_p99_ms": 60.0}, t)
    assert [c["status"] for c in checks] == ["pass", "fail"] and reasons == ["latency_p99_ms = 60.0000, target <= 50.0000"]
    assert verdict_of(checks, reasons) == "fail"
    checks, reasons = check_targets({"AP": 0.29}, t)
    assert [c["status"] for c in checks] == ["fail", "not_applicable"] and verdict_of(checks, reasons) == "fail"
    checks, reasons = check_targets({"AP": float("nan")}, t)
    assert reasons and verdict_of(checks, reasons) == "fail"
    checks, reasons = check_targets({"fps": 10.0}, t)
    assert verdict_of(checks, reasons) == "unchecked"
    assert verdict_of(*check_targets({"AP": 0.5}, t)) == "pass"


def load_spec_targets():
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        return load_spec(_write(Path(d), BASE)).variant().targets


def test_write_record_is_atomic_and_unique(tmp_path):
    rec = full_record("accuracy", backend="b", precision="fp16")
    a, b = write_record(tmp_path, rec), write_record(tmp_path, rec)
    assert a != b and json.loads(a.read_text()) == rec == json.loads(b.read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([a.name, b.name])  # no temp files left
