"""Exit codes and error messages of the command line, on real and on deliberately broken input."""
import json

import pytest
import yaml

from helpers import REPO, run_script
from synthetic_coco import make_synthetic_coco

ACC = "models/rtmdet/scripts/infer_rtmdet_fp32_accuracy.sh"
PERSON350 = "instances_val2017_person_subset350.json"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("syn"), n_images=4, seed=1)


def _assert_clean_error(res, code, *needles):
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert str(needle) in res.stderr, res.stderr


def test_missing_onnx_is_a_configuration_error(synthetic, tmp_path):
    images, ann = synthetic
    missing = tmp_path / "nope.onnx"
    res = run_script(ACC, "--onnx", missing, "--images-dir", images, "--ann", ann, "--results-dir", tmp_path / "r")
    _assert_clean_error(res, 2, missing, "not found")
    assert not (tmp_path / "r").exists()


def test_no_onnx_at_all(synthetic, tmp_path):
    images, ann = synthetic
    res = run_script(ACC, "--images-dir", images, "--ann", ann, env={"ONNX_MODEL": ""})
    _assert_clean_error(res, 2, "--onnx", "ONNX_MODEL")


def test_corrupt_onnx_names_the_file(synthetic, tmp_path):
    images, ann = synthetic
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    res = run_script(ACC, "--onnx", bad, "--images-dir", images, "--ann", ann, "--results-dir", tmp_path / "r")
    _assert_clean_error(res, 2, bad)


def test_missing_annotation_and_images(synthetic, tmp_path, rtmdet_onnx):
    images, _ = synthetic
    res = run_script(ACC, "--onnx", rtmdet_onnx, "--images-dir", images, "--ann", tmp_path / "none.json")
    _assert_clean_error(res, 2, "none.json", "annotation file not found")
    res = run_script(ACC, "--onnx", rtmdet_onnx, "--dataset-dir", tmp_path, "--ann", synthetic[1])
    _assert_clean_error(res, 2, "images directory not found")


def test_malformed_annotation(synthetic, tmp_path, rtmdet_onnx):
    images, _ = synthetic
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    res = run_script(ACC, "--onnx", rtmdet_onnx, "--images-dir", images, "--ann", bad)
    _assert_clean_error(res, 2, bad, "not valid JSON")


@pytest.mark.parametrize("flags,needle", [(["--bs", "0"], "positive integer"), (["--bs", "two"], "positive integer"),
                                          (["--precision", "fp8"], "invalid choice"),
                                          (["--variant", "giant"], "unknown variant")])
def test_bad_flags(flags, needle, synthetic, rtmdet_onnx):
    images, ann = synthetic
    res = run_script(ACC, "--onnx", rtmdet_onnx, "--images-dir", images, "--ann", ann, *flags)
    _assert_clean_error(res, 2, needle)


def test_unknown_backend(synthetic, rtmdet_onnx):
    images, ann = synthetic
    res = run_script(ACC, "--onnx", rtmdet_onnx, "--images-dir", images, "--ann", ann, "--backend", "warp-drive")
    _assert_clean_error(res, 2, "unknown backend")


def _spec_with_targets(tmp_path, minimum):
    spec = yaml.safe_load((REPO / "models" / "rtmdet" / "model.yaml").read_text())
    spec["variants"]["nano-person"]["targets"] = [{"backend": "onnxruntime", "device": "cpu", "precision": "fp32",
                                                   "min": minimum}]
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_failed_target_exits_1_and_pass_exits_0(rtmdet_onnx, shared_data, tmp_path):
    common = ["--onnx", rtmdet_onnx, "--images-dir", shared_data / "coco" / "val2017", "--ann",
              shared_data / "coco" / "annotations" / PERSON350, "--max-images", 20, "--no-progress"]
    strict = _spec_with_targets(tmp_path, {"AP": 0.99, "AP50": 0.1})
    res = run_script("scripts/suite", "accuracy", "--model", strict, *common, "--results-dir", tmp_path / "fail")
    assert res.returncode == 1, res.stderr
    assert "FAIL: AP = " in res.stdout and "target >= 0.9900" in res.stdout
    rec = json.loads(next((tmp_path / "fail").glob("*.json")).read_text())
    assert rec["verdict"] == "fail" and len(rec["reasons"]) == 1 and rec["reasons"][0].startswith("AP = ")
    assert {c["metric"]: c["status"] for c in rec["checks"]} == {"AP": "fail", "AP50": "pass"}
    loose = _spec_with_targets(tmp_path, {"AP": 0.1, "AP50": 0.1})
    res = run_script("scripts/suite", "accuracy", "--model", loose, *common, "--results-dir", tmp_path / "pass")
    assert res.returncode == 0, res.stderr
    assert json.loads(next((tmp_path / "pass").glob("*.json")).read_text())["verdict"] == "pass"


def test_fps_target_is_enforced(rtmdet_onnx, tmp_path):
    spec = _spec_with_targets(tmp_path, {"fps": 1e9})
    res = run_script("scripts/suite", "performance", "--model", spec, "--onnx", rtmdet_onnx, "--warmup", 0,
                     "--min-duration", 0.1, "--min-iters", 3, "--results-dir", tmp_path / "r",
                     env={"DATASETS_DIR": ""})
    assert res.returncode == 1, res.stderr
    assert "FAIL: fps = " in res.stdout
    rec = json.loads(next((tmp_path / "r").glob("*.json")).read_text())
    assert rec["input"] == "random" and rec["verdict"] == "fail"
