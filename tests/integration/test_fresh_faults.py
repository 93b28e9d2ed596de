"""Issue 35's fresh faults (items 4 to 8): each test plants the fault and checks the clear answer the suite
now gives (docs/robustness.md, "Fresh faults")."""
import hashlib
import json
import sys
from pathlib import Path

import pytest

from common.harness.runs import RunConfig, run_accuracy
from tiny_detector import SPEC, tiny_detector_env

N_IMAGES = 12


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_detector_env(tmp_path_factory.mktemp("fresh"), N_IMAGES)


def _cfg(env, tmp, spec=None, **kw):
    kw = {"results_dir": str(tmp / "res"), "cache_dir": str(tmp / "cache"), "preflight": 0, **kw}
    return RunConfig(model=str(spec or env["spec"]), onnx=str(env["onnx"]), dataset_dir=str(env["coco"]),
                     workers=0, progress=False, threads=1, **kw)


# --- item 5: the record says how the images were fed and which spec bytes were read --------------------------

def test_record_carries_resolved_preprocessing_and_spec_hash(env, tmp_path):
    rgb = tmp_path / "rgb.yaml"   # the planted difference: RGB instead of BGR, and the pad / interpolation defaults
    rgb.write_text(SPEC.format(size=64).replace("color: bgr", "color: rgb"))
    record = run_accuracy(_cfg(env, tmp_path, spec=rgb))
    pre = json.loads(json.dumps(record["preprocess"]))  # as a reader of the written record sees it
    assert pre == {"height": 64, "width": 64, "resize": "letterbox", "pad": "bottom_right", "pad_value": 114.0,
                   "color": "rgb", "mean": [100.0] * 3, "std": [50.0] * 3, "interpolation": "linear"}
    assert record["spec"] == {"path": str(rgb), "sha256": hashlib.sha256(rgb.read_bytes()).hexdigest(),
                              "variant": "v"}
    assert record["spec"]["sha256"] != hashlib.sha256(env["spec"].read_bytes()).hexdigest()


def test_category_coverage_line_and_warning(env, tmp_path, capsys):
    from common.cli import print_summary
    # a one-class detector judged on every category of the annotation file (80 listed; 1, 3 and 18 annotated)
    # with an 80-class label map
    wide = tmp_path / "wide.yaml"
    wide.write_text(SPEC.format(size=64).replace("labels: person", "labels: coco80")
                    .replace("categories: [1]", "categories: null"))
    record = run_accuracy(_cfg(env, tmp_path, spec=wide))
    cov = record["dataset"]["category_coverage"]
    assert (cov["evaluated"], cov["detected"], cov["with_ground_truth"], cov["detected_with_ground_truth"]) == \
        (80, 1, 3, 1)
    assert "only 1 of the 3 categories" in cov["warning"]
    print_summary(record)
    out = capsys.readouterr().out
    assert " categories: 1 of 80 evaluated got any detection" in out and "WARNING: only 1 of the 3" in out
    # the spec that evaluates the one category the model knows: covered, no warning
    cov = run_accuracy(_cfg(env, tmp_path))["dataset"]["category_coverage"]
    assert (cov["evaluated"], cov["detected"], cov["warning"]) == (1, 1, None)
