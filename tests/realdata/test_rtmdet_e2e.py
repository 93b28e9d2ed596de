"""End to end on the real shared model and images: scripts -> record -> verdict, checked independently."""
import contextlib
import io
import json
import sys
from pathlib import Path

import onnx
import pytest

from helpers import REPO, run_script

sys.path.insert(0, str(REPO / "scripts"))
from serial_reference import serial_accuracy  # noqa: E402

PERSON350 = "instances_val2017_person_subset350.json"


def _only_record(results_dir: Path) -> dict:
    records = list(results_dir.glob("*.json"))
    assert len(records) == 1, records
    return json.loads(records[0].read_text())


@pytest.mark.slow
def test_fp16_accuracy_script_on_real_data(rtmdet_onnx, coco_layout, tmp_path):
    dets = tmp_path / "dets.json"
    res = run_script("models/rtmdet/scripts/infer_rtmdet_fp16_accuracy.sh", "--ann", PERSON350,
                     "--results-dir", tmp_path / "results", "--save-detections", dets, "--no-progress",
                     env={"DATASETS_DIR": str(coco_layout), "ONNX_MODEL": str(rtmdet_onnx)})
    assert res.returncode == 0, res.stderr
    assert "mAP@0.5:0.95" in res.stdout and "AR @[IoU=0.50:0.95 | area=large | maxDets=100]" in res.stdout
    rec = _only_record(tmp_path / "results")
    assert rec["schema_version"] == 1 and rec["kind"] == "accuracy"
    assert (rec["model"], rec["variant"], rec["backend"], rec["device"], rec["precision"], rec["batch_size"]) == \
        ("rtmdet", "nano-person", "onnxruntime", "cpu", "fp16", 1)
    assert rec["dataset"]["num_images"] == 350 and rec["dataset"]["categories"] == [1]
    assert rec["verdict"] == "pass" and rec["reasons"] == []
    assert {c["metric"] for c in rec["checks"] if c["status"] == "pass"} == {"AP", "AP50"}
    assert rec["environment"]["packages"]["onnxruntime"] and "git_commit" in rec["environment"]
    m = rec["metrics"]
    assert len(m) == 12
    # Sane range for RTMDet-nano person on these images (single-person set B makes it easier than full val2017).
    assert 0.45 < m["AP"] < 0.65 and m["AP"] < m["AP50"] < 0.9
    # The engine is a real FP16 graph, not a relabelled FP32 one.
    engine = onnx.load(rec["engine"]["path"])
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in engine.graph.initializer) > 100
    # pycocotools run directly on the written detections gives the reported numbers.
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_layout / "annotations" / PERSON350))
        ev = COCOeval(gt, gt.loadRes(str(dets)), "bbox")
        ev.params.catIds = [1]
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(m["AP"], abs=1e-9)
    assert ev.stats[1] == pytest.approx(m["AP50"], abs=1e-9)


@pytest.mark.slow
def test_ap_agrees_with_an_independent_serial_implementation(rtmdet_onnx, shared_data, tmp_path):
    """The truth bar: within 0.005 AP of an independent implementation of the documented preprocessing."""
    ann = shared_data / "coco" / "annotations" / "instances_val2017_subset150.json"
    images = shared_data / "coco" / "val2017"
    res = run_script("models/rtmdet/scripts/infer_rtmdet_fp32_accuracy.sh", "--onnx", rtmdet_onnx,
                     "--images-dir", images, "--ann", ann, "--results-dir", tmp_path, "--no-progress", "--bs", 4)
    assert res.returncode in (0, 1), res.stderr
    ours = _only_record(tmp_path)["metrics"]
    stats, _, _ = serial_accuracy(rtmdet_onnx, images, ann)
    assert abs(ours["AP"] - stats[0]) <= 0.005
    assert abs(ours["AP50"] - stats[1]) <= 0.005


def test_batch_size_does_not_change_the_result(rtmdet_onnx, shared_data, tmp_path):
    common = ["--onnx", rtmdet_onnx, "--images-dir", shared_data / "coco" / "val2017", "--ann",
              shared_data / "coco" / "annotations" / PERSON350, "--max-images", 30, "--no-progress"]
    aps = []
    for bs in (1, 4, 7):  # 30 images at bs 4 / 7 end on a partial batch
        out = tmp_path / f"bs{bs}"
        res = run_script("models/rtmdet/scripts/infer_rtmdet_fp32_accuracy.sh", *common, "--bs", bs,
                         "--results-dir", out)
        assert res.returncode in (0, 1), res.stderr
        rec = _only_record(out)
        assert rec["batch_size"] == bs and rec["dataset"]["num_images"] == 30
        aps.append(rec["metrics"]["AP"])
    assert aps[0] == pytest.approx(aps[1], abs=1e-4) == pytest.approx(aps[2], abs=1e-4)


def test_performance_script(rtmdet_onnx, coco_layout, tmp_path):
    res = run_script("models/rtmdet/scripts/infer_rtmdet_fp16_performance.sh", "--bs", 2, "--warmup", 0.2,
                     "--min-duration", 0.5, "--min-iters", 10, "--results-dir", tmp_path, "--ann", PERSON350,
                     env={"DATASETS_DIR": str(coco_layout), "ONNX_MODEL": str(rtmdet_onnx)})
    assert res.returncode == 0, res.stderr
    for word in ("FPS", "p50", "p90", "p99", "CoV"):
        assert word in res.stdout
    rec = _only_record(tmp_path)
    t = rec["timing"]
    assert rec["kind"] == "performance" and rec["batch_size"] == 2 and rec["precision"] == "fp16"
    assert t["iterations"] >= 10 and t["total_s"] >= 0.5
    assert t["fps"] == pytest.approx(2 * t["iterations"] / t["total_s"])
    assert t["min_ms"] <= t["p50_ms"] <= t["p90_ms"] <= t["p99_ms"] <= t["max_ms"]
    assert "image" in rec["input"]
