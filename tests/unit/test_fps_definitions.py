"""FPS definitions: the harness FPS, compute-only FPS (what published MR-V100 figures are) and end-to-end FPS are
three metric names; a target names the one it means, and the spec's int8 section is checked when it loads."""
import json

import pytest
import yaml

from common.errors import ConfigError
from common.record.results import check_targets
from common.config.specs import load_spec
from test_specs_and_results import BASE


def _spec(tmp_path, target=None, int8=None):
    doc = json.loads(json.dumps(BASE))
    if target is not None:
        doc["variants"]["a"]["targets"] = [target]
    if int8 is not None:
        doc["variants"]["a"]["int8"] = int8
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_published_compute_only_figure_is_compared_with_fps_compute(tmp_path):
    target = {"backend": "igie", "precision": "int8", "min": {"fps_compute": 1000}}
    v = load_spec(_spec(tmp_path, target)).variant()
    targets = v.targets_for("igie", "mr-v100", "int8", 32)
    # the harness FPS is far above the figure, compute-only is below it: the target judges compute-only
    checks, reasons = check_targets({"fps": 5000.0, "fps_compute": 900.0, "fps_e2e": 300.0}, targets)
    assert [c["status"] for c in checks] == ["fail"] and "fps_compute = 900" in reasons[0]
    checks, _ = check_targets({"fps": 10.0, "fps_compute": 1200.0, "fps_e2e": 5.0}, targets)
    assert [c["status"] for c in checks] == ["pass"]
    # end-to-end is its own name; an accuracy run has none of them: not applicable, never passed
    v = load_spec(_spec(tmp_path, {"backend": "*", "precision": "fp32", "min": {"fps_e2e": 50}})).variant()
    checks, _ = check_targets({"AP": 0.5}, v.targets_for("onnxruntime", "cpu", "fp32", 1))
    assert checks[0]["status"] == "not_applicable"
    with pytest.raises(ConfigError, match="fps_total"):
        load_spec(_spec(tmp_path, {"backend": "*", "precision": "fp32", "min": {"fps_total": 50}}))


def test_int8_section_checked_when_the_spec_loads(tmp_path):
    v = load_spec(_spec(tmp_path, int8={"method": "entropy", "keep_fp32": ["Conv_0"]})).variant()
    assert v.int8_section["method"] == "entropy"
    path = _spec(tmp_path, int8={"method": "kl_divergence"})
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert str(path) in str(err.value) and "variants.a.int8.method" in str(err.value)
