"""faster-coco-eval must give pycocotools' 12 stats on real detections and real annotations."""
import numpy as np
import pytest

from common.data.coco import read_annotations
from common.evaluate.metrics import STAT_NAMES, coco_metrics

pytest.importorskip("faster_coco_eval", reason="faster-coco-eval is not installed")


@pytest.fixture(scope="module")
def rtmdet_rows(rtmdet_fp32_pass):
    import json
    dets = json.loads(rtmdet_fp32_pass.detections.read_text())
    return np.array([[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in dets], np.float64)


def _both(ann, rows, cats):
    """Reference and fast stats; the fast engine runs before and after the reference, so neither may alter the
    annotations the other reads."""
    ids = [im["id"] for im in ann["images"]]
    fast = coco_metrics(ann, rows, ids, cats, "faster-coco-eval")
    ref = coco_metrics(ann, rows, ids, cats, "pycocotools")
    assert coco_metrics(ann, rows, ids, cats, "faster-coco-eval") == fast
    return ref, fast


@pytest.mark.parametrize("ann_name", ["instances_val2017_person_subset350.json", "instances_val2017_subset150.json"])
def test_identical_stats_on_real_detections(rtmdet_rows, shared_data, ann_name):
    ann = read_annotations(shared_data / "coco" / "annotations" / ann_name)
    keep = np.isin(rtmdet_rows[:, 0], [im["id"] for im in ann["images"]])
    ref, fast = _both(ann, rtmdet_rows[keep], [1])
    assert 0.3 < ref["AP"] < 0.8
    for k in STAT_NAMES:
        assert fast[k] == pytest.approx(ref[k], abs=1e-4), k


def test_identical_stats_on_all_80_categories(shared_data):
    """Ground-truth boxes of every category, jittered, scored at random: a multi-class check."""
    ann = read_annotations(shared_data / "coco" / "annotations" / "instances_val2017_subset150.json")
    rng = np.random.default_rng(0)
    gt = [a for a in ann["annotations"] if not a["iscrowd"]]
    rows = np.array([[a["image_id"], *a["bbox"], 0.0, a["category_id"]] for a in gt], np.float64)
    rows[:, 1:3] += rng.normal(0, 3, size=(len(rows), 2))
    rows[:, 5] = rng.uniform(0.05, 1.0, len(rows))
    cats = sorted({c["id"] for c in ann["categories"]})
    ref, fast = _both(ann, rows, cats)
    assert 0.2 < ref["AP"] < 0.95
    for k in STAT_NAMES:
        assert fast[k] == pytest.approx(ref[k], abs=1e-4), k
