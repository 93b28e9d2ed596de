"""DETR-family output conventions (common/decode/detr.py) on constructed outputs with known answers.

Each test places known boxes in original image pixels, maps them into the network input through the suite's own
preprocess geometry (letterbox and stretch), writes them in the convention's layout, decodes, and expects the
original boxes, scores and labels back.
"""
from __future__ import annotations

import numpy as np
import pytest

from common.decode.outputs import get_decoder
from common.errors import ConfigError, InputError
from common.data.preprocess import Preprocessor, boxes_to_input
from common.config.specs import Preprocess

H = W = 640
# two images of different sizes; boxes in original pixels
SIZES = [(480, 640), (300, 200)]      # (h, w)
ORIG = [np.array([[10, 20, 110, 220], [300, 100, 620, 470]], np.float64),
        np.array([[5, 5, 50, 60], [100, 150, 190, 290]], np.float64)]


def _meta(resize: str) -> np.ndarray:
    pre = Preprocessor(Preprocess(resize=resize, pad="bottom_right", color="rgb"), H, W)
    return np.stack([pre(np.zeros((h, w, 3), np.uint8))[1] for h, w in SIZES])


def _input_boxes(meta):
    return np.stack([boxes_to_input(ORIG[i], meta[i]) for i in range(len(SIZES))])   # [B, 2, 4] xyxy


def _cxcywh_norm(xyxy):
    cx, cy = (xyxy[..., 0] + xyxy[..., 2]) / 2, (xyxy[..., 1] + xyxy[..., 3]) / 2
    w, h = xyxy[..., 2] - xyxy[..., 0], xyxy[..., 3] - xyxy[..., 1]
    return (np.stack([cx, cy, w, h], -1) / np.array([W, H, W, H])).astype(np.float32)


def _logit(p):
    return np.log(p / (1 - p)).astype(np.float32)


def _sorted(dets):
    bi, boxes, scores, labels = dets
    order = np.lexsort((-scores, bi))
    return bi[order], boxes[order], scores[order], labels[order]


CFG = {"input_height": H, "input_width": W}


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
def test_detr_logits_cxcywh_topk_floor(resize):
    meta = _meta(resize)
    q, c = 5, 4
    inp = _input_boxes(meta)
    boxes = np.full((2, q, 4), 0.5, np.float32)        # queries 2..4: background
    boxes[:, :2] = _cxcywh_norm(inp)
    probs = np.full((2, q, c), 0.001, np.float32)
    probs[0, 0, 2], probs[0, 1, 0] = 0.9, 0.8
    probs[1, 0, 3], probs[1, 1, 1] = 0.7, 0.95
    probs[1, 1, 2] = 0.6                                 # a second class for the same query: kept (no NMS)
    dets = get_decoder({"convention": "detr"})({"logits": _logit(probs), "pred_boxes": boxes}, meta,
                                                {**CFG, "convention": "detr", "score_threshold": 0.01})
    bi, got, scores, labels = _sorted(dets)
    assert bi.tolist() == [0, 0, 1, 1, 1]
    assert labels.tolist() == [2, 0, 1, 3, 2]
    np.testing.assert_allclose(scores, [0.9, 0.8, 0.95, 0.7, 0.6], rtol=1e-5)
    want = np.stack([ORIG[0][0], ORIG[0][1], ORIG[1][1], ORIG[1][0], ORIG[1][1]])
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_detr_topk_caps_per_image_and_floor_drops_the_rest():
    meta = _meta("stretch")
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.0, 0.5, (2, 50, 7)).astype(np.float32)
    boxes = rng.uniform(0.2, 0.4, (2, 50, 4)).astype(np.float32)
    out = {"logits": _logit(probs), "pred_boxes": boxes}
    bi, _, scores, _ = get_decoder({"convention": "detr"})(out, meta, {**CFG, "max_per_img": 30, "score_threshold": 0})
    assert np.bincount(bi).tolist() == [30, 30]
    for i in range(2):                                   # exactly the 30 best of all 350 (query, class) pairs
        np.testing.assert_allclose(np.sort(scores[bi == i]), np.sort(probs[i].ravel())[-30:], rtol=1e-5)
    bi, _, scores, _ = get_decoder({"convention": "detr"})(out, meta, {**CFG, "score_threshold": 0.45})
    assert (scores > 0.45).all() and len(scores) == int((probs > 0.45).sum())


def test_detr_softmax_drops_no_object_class():
    meta = _meta("stretch")[:1]
    logits = np.array([[[0.0, 5.0, 0.0], [0.0, 0.0, 9.0]]], np.float32)   # query 1 is "no object"
    boxes = np.full((1, 2, 4), 0.25, np.float32)
    bi, _, scores, labels = get_decoder({"convention": "detr"})(
        {"logits": logits, "pred_boxes": boxes}, meta, {**CFG, "activation": "softmax", "score_threshold": 0.5})
    assert labels.tolist() == [1] and bi.tolist() == [0]


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
def test_absolute_boxes_labels_scores(resize):
    meta = _meta(resize)
    boxes = _input_boxes(meta).astype(np.float32)
    out = {"boxes": boxes, "labels": np.array([[3, 7], [0, 1]], np.int64),
           "scores": np.array([[0.9, 0.005], [0.4, 0.3]], np.float32)}
    bi, got, scores, labels = _sorted(get_decoder({"convention": "boxes_labels_scores"})(out, meta, CFG))
    assert bi.tolist() == [0, 1, 1] and labels.tolist() == [3, 0, 1]      # 0.005 is under the 0.01 floor
    np.testing.assert_allclose(got, np.stack([ORIG[0][0], ORIG[1][0], ORIG[1][1]]), atol=1e-3)


def test_ultralytics_rows():
    meta = _meta("stretch")
    preds = np.zeros((2, 3, 4 + 5), np.float32)
    preds[:, :2, :4] = _cxcywh_norm(_input_boxes(meta))
    preds[0, 0, 4 + 4], preds[0, 1, 4 + 1], preds[1, 0, 4 + 0], preds[1, 1, 4 + 2] = 0.8, 0.6, 0.7, 0.002
    preds[0, 0, 4 + 3] = 0.5                            # not the best class of its query: not a detection
    bi, got, scores, labels = _sorted(get_decoder({"convention": "ultralytics"})({"output0": preds}, meta, CFG))
    assert bi.tolist() == [0, 0, 1] and labels.tolist() == [4, 1, 0]
    np.testing.assert_allclose(scores, [0.8, 0.6, 0.7], rtol=1e-6)
    np.testing.assert_allclose(got, np.stack([ORIG[0][0], ORIG[0][1], ORIG[1][0]]), atol=1e-3)


def _paddle_rows(meta):
    inp = _input_boxes(meta)
    rows = np.full((2, 4, 6), 0, np.float32)
    rows[..., 0] = -1                                    # padding rows
    rows[0, 0] = [5, 0.9, *inp[0, 0]]
    rows[0, 1] = [2, 0.3, *inp[0, 1]]
    rows[1, 2] = [0, 0.7, *inp[1, 1]]
    return rows


@pytest.mark.parametrize("layout", ["stacked_with_count", "batched", "ragged"])
def test_paddle_rows(layout):
    meta = _meta("letterbox")
    rows = _paddle_rows(meta)
    cfg = {**CFG, "rows": "rows"}
    if layout == "batched":
        out = {"rows": rows}
    elif layout == "stacked_with_count":
        out, cfg["count"] = {"rows": rows.reshape(-1, 6), "bbox_num": np.array([4, 4], np.int32)}, "bbox_num"
    else:                                                # image 0 has 2 rows, image 1 has 3
        out = {"rows": np.concatenate([rows[0, :2], rows[1, :3]]), "bbox_num": np.array([2, 3], np.int32)}
        cfg["count"] = "bbox_num"
    bi, got, scores, labels = _sorted(get_decoder({"convention": "paddle_rows"})(out, meta, cfg))
    assert bi.tolist() == [0, 0, 1] and labels.tolist() == [5, 2, 0]
    np.testing.assert_allclose(scores, [0.9, 0.3, 0.7], rtol=1e-6)
    np.testing.assert_allclose(got, np.stack([ORIG[0][0], ORIG[0][1], ORIG[1][1]]), atol=1e-3)


def test_paddle_rows_in_original_pixels_and_bad_counts():
    meta = _meta("letterbox")
    rows = np.zeros((2, 1, 6), np.float32)
    rows[0, 0] = [1, 0.5, *ORIG[0][0]]
    rows[1, 0] = [1, 0.5, *ORIG[1][1]]
    _, got, _, _ = get_decoder({"convention": "paddle_rows"})({"rows": rows}, meta, {**CFG, "boxes_in": "original"})
    np.testing.assert_allclose(got, np.stack([ORIG[0][0], ORIG[1][1]]), atol=1e-6)
    with pytest.raises(InputError, match="does not split"):
        get_decoder({"convention": "paddle_rows"})({"rows": rows.reshape(-1, 6), "n": np.array([1, 3])}, meta,
                                                   {**CFG, "count": "n"})
    with pytest.raises(ConfigError, match="output.count"):
        get_decoder({"convention": "paddle_rows"})({"rows": rows.reshape(-1, 6)}, meta, CFG)


def test_paddle_rows_of_a_padded_static_batch():
    """A static-batch engine ran 2 copies for 1 image; the runner cut the count to [B] but not the stacked rows."""
    meta = _meta("letterbox")[:1]
    rows = _paddle_rows(_meta("letterbox"))[[0, 0]].reshape(-1, 6)          # image 0 twice, 4 rows each
    bi, got, _, labels = get_decoder({"convention": "paddle_rows"})(
        {"rows": rows, "bbox_num": np.array([4])}, meta, {**CFG, "count": "bbox_num"})
    assert bi.tolist() == [0, 0] and sorted(labels.tolist()) == [2, 5]


def test_shape_errors_name_the_problem():
    meta = _meta("stretch")
    with pytest.raises(InputError, match=r"\[B, Q, 4\]"):
        get_decoder({"convention": "detr"})({"logits": np.zeros((2, 3, 2)), "pred_boxes": np.zeros((2, 3, 5))},
                                            meta, CFG)
    with pytest.raises(InputError, match="no output 'logits'"):
        get_decoder({"convention": "detr"})({"x": np.zeros(1)}, meta, CFG)


def test_nonfinite_outputs_are_counted_and_never_become_detections():
    from common.decode.outputs import nonfinite_counts
    meta = _meta("stretch")
    logits = np.full((2, 3, 2), 2.0, np.float32)
    logits[0, 0, 0], logits[1, 2, 1] = np.nan, np.inf
    boxes = np.full((2, 3, 4), 0.3, np.float32)
    boxes[1, 1, 2] = np.nan
    out = {"logits": logits, "pred_boxes": boxes}
    assert nonfinite_counts(out) == {"logits": 2, "pred_boxes": 1}
    bi, got, scores, _ = get_decoder({"convention": "detr"})(out, meta, CFG)
    assert np.isfinite(scores).all() and len(scores) == 12 - 1      # the NaN score is dropped, +inf -> 1.0 kept
    assert (~np.isfinite(got).all(axis=1)).sum() == 2               # NaN box rows: the accuracy run drops these


def test_ultralytics_84_topk_rows_6_columns():
    """Ultralytics >= 8.4: output0 [B, N, 6] = (cx, cy, w, h, score, class), chosen by the last dimension."""
    meta = _meta("stretch")
    preds = np.zeros((2, 3, 6), np.float32)
    preds[:, :2, :4] = _cxcywh_norm(_input_boxes(meta))
    preds[0, :, 4:] = [[0.8, 4], [0.6, 1], [0.005, 7]]            # the last under the floor
    preds[1, :, 4:] = [[0.7, 79], [0.3, 0], [0.2, 3]]
    preds[1, 2, :4] = preds[1, 0, :4]                                # one query, a second class
    bi, got, scores, labels = _sorted(get_decoder({"convention": "ultralytics"})({"output0": preds}, meta, CFG))
    assert bi.tolist() == [0, 0, 1, 1, 1] and labels.tolist() == [4, 1, 79, 0, 3]
    np.testing.assert_allclose(scores, [0.8, 0.6, 0.7, 0.3, 0.2], rtol=1e-6)
    np.testing.assert_allclose(got[:4], np.stack([ORIG[0][0], ORIG[0][1], ORIG[1][0], ORIG[1][1]]), atol=1e-3)
    np.testing.assert_allclose(got[4], ORIG[1][0], atol=1e-3)
    # a 2-class model of the old layout is 6 wide too: `layout: per_class` reads it so
    _, _, _, labels = _sorted(get_decoder({"convention": "ultralytics"})({"output0": preds}, meta,
                                                                          {**CFG, "layout": "per_class"}))
    assert set(labels.tolist()) <= {0, 1}
    with pytest.raises(ConfigError, match="layout"):
        get_decoder({"convention": "ultralytics"})({"output0": preds}, meta, {**CFG, "layout": "rows"})
    with pytest.raises(InputError, match=r"\[B, N, 6\]"):
        get_decoder({"convention": "ultralytics"})({"output0": preds[..., :5]}, meta, {**CFG, "layout": "topk"})


def test_detr_boxes_are_not_clipped_unless_asked():
    """The lines' reference post-processors leave boxes past the image as predicted; clip_boxes: true clips."""
    meta = _meta("stretch")
    preds = np.zeros((2, 1, 6), np.float32)
    preds[:, 0] = [0.05, 0.5, 0.3, 0.4, 0.9, 1]                    # x1 = -0.1 of the canvas
    dec = get_decoder({"convention": "ultralytics"})
    _, got, _, _ = dec({"output0": preds}, meta, CFG)
    h, w = SIZES[0]
    np.testing.assert_allclose(got[0], [-0.1 * w, 0.3 * h, 0.2 * w, 0.7 * h], rtol=1e-5)
    _, got, _, _ = dec({"output0": preds}, meta, {**CFG, "clip_boxes": True})
    np.testing.assert_allclose(got[0], [0, 0.3 * h, 0.2 * w, 0.7 * h], rtol=1e-5)
    with pytest.raises(ConfigError, match="clip_boxes"):
        dec({"output0": preds}, meta, {**CFG, "clip_boxes": "yes"})
    logits = np.full((2, 1, 2), 3.0, np.float32)
    _, got, _, _ = get_decoder({"convention": "detr"})({"logits": logits, "pred_boxes": preds[..., :4]}, meta, CFG)
    assert (got[:, 0] < 0).all()


def test_scores_outside_0_1_are_counted_for_every_probability_convention():
    from common.decode.outputs import CLASS_FAULT, SCORE_FAULT, fault_reasons, output_faults
    ok6 = np.zeros((1, 3, 6), np.float32)
    ok6[0, :, 4:] = [[0.9, 3], [0.1, 0], [1.0, 79]]
    assert output_faults({"output0": ok6}, {"convention": "ultralytics"}) == {}
    bad6 = ok6.copy()
    bad6[0, 0, 4], bad6[0, 1, 5] = 7.0, 2.5                           # a logit; a class that is no index
    assert output_faults({"output0": bad6}, {"convention": "ultralytics"}) == {"output0" + SCORE_FAULT: 1,
                                                                               "output0" + CLASS_FAULT: 1}
    bad6[0, 2, 5] = -1                                               # never a detection, counted
    _, _, _, labels = get_decoder({"convention": "ultralytics"})({"output0": bad6}, _meta("stretch")[:1], CFG)
    assert (labels >= 0).all() and len(labels) == 2
    per_class = np.concatenate([np.zeros((1, 3, 4)), np.array([[[0.2, 1.3, 0], [-0.1, 0.5, 0], [0.0, 1.0, 0]]])], -1)
    assert output_faults({"output0": per_class}, {"convention": "ultralytics"}) == {"output0" + SCORE_FAULT: 2}
    bls = {"boxes": np.zeros((1, 2, 4)), "labels": np.zeros((1, 2)), "scores": np.array([[0.5, 12.0]])}
    assert output_faults(bls, {"convention": "boxes_labels_scores"}) == {"scores" + SCORE_FAULT: 1}
    rows = np.array([[[1, 0.5, 0, 0, 1, 1], [3, 4.0, 0, 0, 1, 1], [-1, 99.0, 0, 0, 0, 0]]], np.float32)
    assert output_faults({"rows": rows}, {"convention": "paddle_rows"}) == {"rows" + SCORE_FAULT: 1}  # not padding
    dets = np.zeros((1, 2, 5), np.float32)
    dets[0, 1, 4] = -3
    assert output_faults({"dets": dets}, {"convention": "end2end"}) == {"dets" + SCORE_FAULT: 1}
    logits = {"logits": np.array([[[5.0, -2.0]]]), "pred_boxes": np.zeros((1, 1, 4))}
    assert output_faults(logits, {"convention": "detr"}) == {}                   # sigmoid makes probabilities
    assert output_faults(logits, {"convention": "detr", "activation": "none"}) == {"logits" + SCORE_FAULT: 2}
    nan = {"logits": np.array([[[np.nan, 0.5]]]), "pred_boxes": np.zeros((1, 1, 4))}
    counts = output_faults(nan, {"convention": "detr", "activation": "none"})
    assert counts == {"logits": 1}
    assert "class values that are no class index" in fault_reasons({"output0" + CLASS_FAULT: 2})[0]
    assert fault_reasons({"logits": 1, "output0" + SCORE_FAULT: 3}) == [
        "output 'logits' has 1 NaN/Inf values",
        "output 'output0' has 3 scores outside [0, 1] where the convention expects probabilities: the output "
        "layout or convention does not match the model"]
