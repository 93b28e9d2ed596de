"""Real-weights proof: the shared end2end RTMDet-nano graph cut at its raw head outputs, decoded by the suite's
rtmdet_raw convention, gives the same person AP as the graph's own built-in NMS (within 0.01)."""
import pytest

from common.harness.runs import RunConfig, run_accuracy
from helpers import detections_ap

ANN = "instances_val2017_person_subset350.json"
IMAGES = 150


@pytest.fixture(scope="module")
def raw_onnx(rtmdet_raw_onnx):
    return rtmdet_raw_onnx


def test_raw_head_decoding_matches_end2end_ap(rtmdet_fp32_pass, raw_onnx, coco_layout, tmp_path):
    """On the first IMAGES images: the end2end side comes from the session's FP32 pass on the same images."""
    cfg = RunConfig(model="rtmdet", variant="nano-person-raw", onnx=str(raw_onnx), dataset_dir=str(coco_layout),
                    annotation=ANN, results_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), progress=False,
                    batch_size=8, max_images=IMAGES)
    end2end = detections_ap(rtmdet_fp32_pass.detections, coco_layout / "annotations" / ANN, IMAGES)["AP"]
    raw = run_accuracy(cfg)["metrics"]["AP"]
    print(f"person AP end2end={end2end:.4f} raw-head+suite decode={raw:.4f}")
    assert end2end > 0.3
    assert abs(end2end - raw) <= 0.01
