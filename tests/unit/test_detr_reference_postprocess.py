"""The suite's RT-DETR decoding against each line's own post-processing, on the same recorded raw outputs.

A pure-ONNX random set predictor (tests/tiny_set_predictor.py) is run through the suite's accuracy command in each
line's output layout, recording its raw outputs (--record-outputs) and saving the suite's detections
(--save-detections). The recorded outputs are then post-processed by each line's reference:

- transformers: RTDetrImageProcessor.post_process_object_detection (the installed transformers itself);
- the authors' RTDETRPostProcessor (lyuwenyu/RT-DETR, v1 and v2 alike), re-stated from its documented behaviour:
  sigmoid, top num_top_queries (query, class) pairs over the flattened Q x C scores, label = index % C, query =
  index // C, boxes cxcywh -> xyxy times the original (w, h, w, h), no clipping, no threshold;
- Ultralytics >= 8.4 (output0 [B, 300, 6]) and older exports (output0 [B, 300, 4 + C]): RTDETRPredictor.postprocess
  re-stated (xywh2xyxy, score > conf, [:max_det], x * original width, y * original height, no clipping).

Both sides keep the suite's floor (score > 0.01, the spec's score_threshold). At least 99% of detections must match
one to one (same category, IoU >= 0.99, scores within 1e-3). The ultralytics package is never needed.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from common.cli import main
from common.runtime.replay import Recording
from common.config.specs import COCO80_TO_91
from synthetic_coco import make_synthetic_coco
from tiny_set_predictor import build_set_predictor, set_predictor_spec

FLOOR, MAX_DET = 0.01, 300


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _cxcywh_to_xyxy(b):
    return np.concatenate([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], axis=-1)


def authors_postprocessor(logits, boxes, w, h, num_top_queries=300):
    """lyuwenyu RTDETRPostProcessor (use_focal_loss=True) for one image: (boxes xyxy, scores, labels)."""
    c = logits.shape[-1]
    xyxy = _cxcywh_to_xyxy(boxes.astype(np.float64)) * np.array([w, h, w, h])
    flat = _sigmoid(logits).reshape(-1)
    index = np.argsort(-flat, kind="stable")[:num_top_queries]
    return xyxy[index // c], flat[index], index % c


def transformers_postprocess(logits, boxes, w, h):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out = SimpleNamespace(logits=torch.from_numpy(np.ascontiguousarray(logits[None])),
                          pred_boxes=torch.from_numpy(np.ascontiguousarray(boxes[None])))
    r = transformers.RTDetrImageProcessor().post_process_object_detection(out, threshold=FLOOR,
                                                                           target_sizes=[(h, w)])[0]
    return r["boxes"].numpy(), r["scores"].numpy(), r["labels"].numpy()


def ultralytics_predictor(pred, w, h):
    """RTDETRPredictor.postprocess for one image of output0, either layout: (boxes xyxy, scores, labels)."""
    if pred.shape[-1] == 6:                       # >= 8.4: (cx, cy, w, h, score, class), already top-k, best first
        bbox, score, label = pred[:, :4], pred[:, 4], pred[:, 5]
    else:                                         # older: per-class probabilities, best class per query
        bbox, cls = pred[:, :4], pred[:, 4:]
        label = cls.argmax(-1)
        score = cls.max(-1)
    bbox = _cxcywh_to_xyxy(bbox.astype(np.float64))
    keep = np.nonzero(score > FLOOR)[0][:MAX_DET]
    bbox = bbox[keep] * np.array([w, h, w, h])
    return bbox, score[keep], np.rint(label[keep]).astype(np.int64)


def _iou(a, b):
    lt, rb = np.maximum(a[:2], b[:, :2]), np.minimum(a[2:], b[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])   # noqa: E731
    return inter / (area(a) + area(b) - inter)


def match_fraction(ref: dict, suite: dict) -> tuple[float, int]:
    """ref, suite: image id -> (boxes xyxy, scores, category ids). One-to-one greedy matching from the highest
    reference score; returns (matched / max(#ref, #suite), #ref)."""
    matched = total_ref = total_suite = 0
    for image_id in set(ref) | set(suite):
        rb, rs, rc = ref.get(image_id, (np.zeros((0, 4)), np.zeros(0), np.zeros(0)))
        sb, ss, sc = suite.get(image_id, (np.zeros((0, 4)), np.zeros(0), np.zeros(0)))
        total_ref, total_suite = total_ref + len(rs), total_suite + len(ss)
        used = np.zeros(len(ss), bool)
        for k in np.argsort(-rs, kind="stable"):
            ok = ~used & (sc == rc[k]) & (np.abs(ss - rs[k]) <= 1e-3)
            if not ok.any():
                continue
            iou = np.where(ok, _iou(rb[k], sb) if len(sb) else np.zeros(0), -1)
            best = int(np.argmax(iou))
            if iou[best] >= 0.99:
                used[best] = True
                matched += 1
    return matched / max(total_ref, total_suite, 1), total_ref


def _suite_detections(path: Path) -> dict:
    rows = json.loads(path.read_text())
    out: dict = {}
    for r in rows:
        x, y, w, h = r["bbox"]
        out.setdefault(r["image_id"], []).append(([x, y, x + w, y + h], r["score"], r["category_id"]))
    return {k: (np.array([b for b, _, _ in v]), np.array([s for _, s, _ in v]), np.array([c for _, _, c in v]))
            for k, v in out.items()}


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    """Per layout: the recorded outputs, the suite's saved detections, the image sizes."""
    root = tmp_path_factory.mktemp("detr_ref")
    make_synthetic_coco(root / "coco", n_images=5, seed=4)
    onnx = {layout: build_set_predictor(root / f"{layout}.onnx", layout, seed=1)
            for layout in ("detr", "ultra6", "ultra84")}
    spec = set_predictor_spec(root / "model.yaml", onnx)
    ann = json.loads((root / "coco" / "annotations" / "instances_val2017.json").read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in ann["images"]}
    runs = {}
    for layout in onnx:
        rec, dets = root / f"rec_{layout}", root / f"dets_{layout}.json"
        code = main(["accuracy", "--model", str(spec), "--variant", layout.replace("_", "-"), "--dataset-dir",
                     str(root / "coco"), "--results-dir", str(root / "res"), "--cache-dir", str(root / "cache"),
                     "--workers", "0", "--no-progress", "--preflight", "0", "--bs", "2",
                     "--record-outputs", str(rec), "--save-detections", str(dets), "--no-resume"])
        assert code == 0, layout
        runs[layout] = (Recording(rec), _suite_detections(dets))
    return runs, sizes


def _reference(recording: Recording, sizes: dict, fn) -> dict:
    ref = {}
    for image_id in recording.manifest["image_ids"]:
        out = recording.batch([image_id])
        w, h = sizes[image_id]
        boxes, scores, labels = fn({k: v[0] for k, v in out.items()}, w, h)
        keep = scores > FLOOR
        ref[image_id] = (boxes[keep], scores[keep], np.asarray(COCO80_TO_91)[labels[keep].astype(np.int64)])
    return ref


@pytest.mark.parametrize("layout, reference", [
    ("detr", "transformers"), ("detr", "authors"), ("ultra6", "ultralytics"), ("ultra84", "ultralytics")])
def test_suite_decoding_matches_the_reference_post_processor(lines, layout, reference):
    runs, sizes = lines
    recording, suite = runs[layout]
    fn = {"transformers": lambda o, w, h: transformers_postprocess(o["logits"], o["pred_boxes"], w, h),
          "authors": lambda o, w, h: authors_postprocessor(o["logits"], o["pred_boxes"], w, h),
          "ultralytics": lambda o, w, h: ultralytics_predictor(o["output0"], w, h)}[reference]
    ref = _reference(recording, sizes, fn)
    fraction, n_ref = match_fraction(ref, suite)
    assert n_ref >= 5 * 100, n_ref                      # a real comparison: hundreds of detections per line
    print(f"\n{layout} vs {reference}: matched {fraction:.4f} of {n_ref} reference detections")
    assert fraction >= 0.99, fraction
    # the references do not clip, and neither does the suite: many of this network's boxes leave the image
    outside = sum(int(((b[:, :2] < -1) | (b[:, 2:] > np.array(sizes[i]) + 1)).any(axis=1).sum())
                  for i, (b, _, _) in suite.items())
    assert outside > 50


def test_the_matcher_fails_a_wrong_decoding(lines):
    """The comparison can fail: the same recording decoded with clipped boxes, or with the class of the next
    column, does not match the reference."""
    runs, sizes = lines
    recording, suite = runs["ultra6"]
    ref = _reference(recording, sizes, lambda o, w, h: ultralytics_predictor(o["output0"], w, h))
    clipped = {i: (np.clip(b, 0, np.tile(np.array(sizes[i]), 2)), s, c) for i, (b, s, c) in suite.items()}
    assert match_fraction(ref, clipped)[0] < 0.9
    shifted = {i: (b, s, np.asarray(COCO80_TO_91)[(np.searchsorted(COCO80_TO_91, c) + 1) % 80])
               for i, (b, s, c) in suite.items()}
    assert match_fraction(ref, shifted)[0] < 0.1
