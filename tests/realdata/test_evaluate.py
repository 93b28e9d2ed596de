import contextlib
import io
import json

import numpy as np
import pytest

from common.data.coco import read_annotations
from common.evaluate.metrics import STAT_NAMES, CocoEvaluator
from common.config.specs import COCO80_TO_91
from synthetic_coco import make_synthetic_coco


def _gt_detections(ann, shift=0.0, only_cats=None):
    """Detections equal to the non-crowd ground truth boxes, optionally shifted by a constant."""
    rows = [a for a in ann["annotations"] if not a.get("iscrowd") and (only_cats is None or a["category_id"] in only_cats)]
    ids = np.array([a["image_id"] for a in rows])
    xywh = np.array([a["bbox"] for a in rows], np.float64).reshape(-1, 4)
    xyxy = np.concatenate([xywh[:, :2] + shift, xywh[:, :2] + xywh[:, 2:] + shift], axis=1)
    cats = np.array([a["category_id"] for a in rows])
    labels = np.array([COCO80_TO_91.index(c) for c in cats])
    scores = np.linspace(0.99, 0.5, len(rows))
    return ids, xyxy, scores, labels


def _pycocotools_direct(ann_file, ids, xyxy, scores, cats, image_ids, cat_ids):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    res = [{"image_id": int(i), "category_id": int(c), "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]),
                                                                 float(b[3] - b[1])], "score": float(s)}
           for i, b, s, c in zip(ids, xyxy, scores, cats)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        ev = COCOeval(gt, gt.loadRes(res), "bbox")
        ev.params.imgIds, ev.params.catIds = list(image_ids), list(cat_ids)
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return dict(zip(STAT_NAMES, ev.stats))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp("syn"), n_images=12, seed=3)


def test_perfect_detections_score_one(synthetic):
    _, ann_file = synthetic
    ann = read_annotations(ann_file)
    ev = CocoEvaluator(ann, COCO80_TO_91)
    ev.add(*_gt_detections(ann))
    m = ev.evaluate([im["id"] for im in ann["images"]])
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0) and m["AR100"] == pytest.approx(1.0)


def test_no_detections_score_zero(synthetic):
    _, ann_file = synthetic
    ann = read_annotations(ann_file)
    m = CocoEvaluator(ann, COCO80_TO_91).evaluate([im["id"] for im in ann["images"]])
    assert m["AP"] == 0.0 and m["AR100"] == 0.0


@pytest.mark.parametrize("shift", [2.0, 6.0])
def test_shifted_detections_match_pycocotools(synthetic, shift):
    _, ann_file = synthetic
    ann = read_annotations(ann_file)
    ids, xyxy, scores, labels = _gt_detections(ann, shift)
    ev = CocoEvaluator(ann, COCO80_TO_91)
    ev.add(ids, xyxy, scores, labels)
    image_ids = [im["id"] for im in ann["images"]]
    ours = ev.evaluate(image_ids)
    ref = _pycocotools_direct(ann_file, ids, xyxy, scores, np.array(COCO80_TO_91)[labels], image_ids,
                              sorted({c["id"] for c in ann["categories"]}))
    assert 0.0 < ours["AP"] < 1.0
    for k in STAT_NAMES:
        assert ours[k] == pytest.approx(ref[k], abs=1e-12), k


def test_real_annotations_person_only(shared_data):
    """On the official set-A records (crowd boxes included): perfect person boxes give AP 1.0, and a shift gives
    exactly what pycocotools gives, with only category 1 evaluated."""
    ann_file = shared_data / "coco" / "annotations" / "instances_val2017_subset150.json"
    ann = read_annotations(ann_file)
    image_ids = [im["id"] for im in ann["images"]]
    ev = CocoEvaluator(ann, COCO80_TO_91, categories=[1])
    ev.add(*_gt_detections(ann))  # all classes given; non-person ones must be dropped
    assert ev.evaluate(image_ids)["AP"] == pytest.approx(1.0)
    ids, xyxy, scores, labels = _gt_detections(ann, shift=4.0, only_cats={1})
    ev = CocoEvaluator(ann, COCO80_TO_91, categories=[1])
    ev.add(ids, xyxy, scores, labels)
    ours = ev.evaluate(image_ids)
    ref = _pycocotools_direct(ann_file, ids, xyxy, scores, np.ones(len(ids), int), image_ids, [1])
    for k in STAT_NAMES:
        assert ours[k] == pytest.approx(ref[k], abs=1e-12), k


def test_label_outside_the_map_is_a_clear_error(synthetic):
    from common.errors import InputError
    ann = read_annotations(synthetic[1])
    ev = CocoEvaluator(ann, (1,))
    with pytest.raises(InputError, match="label 3"):
        ev.add(np.array([1000]), np.zeros((1, 4)), np.ones(1), np.array([3]))


def test_coco_results_are_the_per_value_conversion():
    """to_coco_results converts columns at once: the same ints (truncated) and floats, hence the same JSON, as
    int()/float() value by value; no rows, no results."""
    from common.evaluate.metrics import to_coco_results
    rng = np.random.default_rng(3)
    rows = rng.random((500, 7)) * 1000
    rows[:, 0] = rng.integers(0, 10**12, 500)
    rows[:, 6] = rng.integers(1, 91, 500)
    rows[:3, 1:6] = [-0.0, 5e-324, 1e300, 2.5, 0.1]
    ref = [{"image_id": int(r[0]), "category_id": int(r[6]), "bbox": [float(v) for v in r[1:5]],
            "score": float(r[5])} for r in rows]
    assert json.dumps(to_coco_results(rows)) == json.dumps(ref)
    assert to_coco_results(np.empty((0, 7))) == []
