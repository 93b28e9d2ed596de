"""rtmdet_raw decoding on hand-built head outputs whose correct detections are known."""
import numpy as np
import pytest

from common.decode.outputs import get_decoder
from common.errors import InputError

CFG = {"convention": "rtmdet_raw", "cls": ["c8", "c16", "c32"], "reg": ["r8", "r16", "r32"],
       "strides": [8, 16, 32], "input_height": 64, "input_width": 64}


def _outputs(batch=2, classes=3):
    out = {}
    for s in (8, 16, 32):
        h = w = 64 // s
        out[f"c{s}"] = np.full((batch, classes, h, w), -20.0, np.float32)   # sigmoid ~ 0: below threshold
        out[f"r{s}"] = np.full((batch, 4, h, w), 4.0, np.float32)
    return out


def test_decodes_point_distance_boxes_with_class_aware_nms():
    out = _outputs()
    # image 0: stride-8 prior at (x=16, y=8) (row 1, col 2) class 1, box (6, 0, 26, 18) after clipping y1
    out["c8"][0, 1, 1, 2] = 3.0
    out["r8"][0, :, 1, 2] = [10, 10, 10, 10]
    # a near-duplicate of the same class at the neighbouring prior (suppressed) and of another class (kept)
    out["c8"][0, 1, 1, 3] = 2.0
    out["r8"][0, :, 1, 3] = [18, 10, 2, 10]
    out["c8"][0, 2, 1, 3] = 1.0
    out["r8"][0, :, 1, 3] = [18, 10, 2, 10]
    meta = np.array([[1, 1, 0, 0, 64, 64], [2, 2, 0, 0, 32, 32]], np.float32)
    bi, boxes, scores, labels = get_decoder(CFG)(out, meta, CFG)
    assert bi.tolist() == [0, 0]
    assert labels.tolist() == [1, 2]
    np.testing.assert_allclose(boxes[0], [6, 0, 26, 18])
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-np.array([3.0, 1.0]))), rtol=1e-6)


def test_score_threshold_and_max_per_img_override():
    out = _outputs(batch=1)
    out["c16"][0, 0] = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)
    cfg = {**CFG, "score_threshold": 0.5, "max_per_img": 3, "iou_threshold": 1.0}
    bi, boxes, scores, labels = get_decoder(cfg)(out, np.array([[1, 1, 0, 0, 64, 64]], np.float32), cfg)
    assert len(scores) == 3 and np.all(scores > 0.5) and np.all(np.diff(scores) <= 0)


def test_bad_output_shapes_name_the_outputs():
    out = _outputs()
    out["r16"] = out["r16"][:, :3]
    with pytest.raises(InputError, match="r16"):
        get_decoder(CFG)(out, np.zeros((2, 6), np.float32), CFG)
