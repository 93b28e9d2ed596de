"""The incremental COCO evaluator gives pycocotools' 12 stats, whatever order and grouping the detections arrive
in; pycocotools' COCOeval on the same detections is the reference."""
import json

import numpy as np
import pytest

from common.evaluate.metrics import STAT_NAMES, CocoEvaluator, coco_metrics
import common.evaluate.incremental as inc
from common.evaluate.incremental import IncrementalCocoEval
from synthetic_coco import make_synthetic_coco


def _hard_detections(ann: dict, cats: list, seed: int) -> np.ndarray:
    """Rows (image_id, x, y, w, h, score, category) that exercise the matcher: jittered copies of every ground
    truth box (duplicates compete for one match), boxes on crowd regions, random boxes of every size range, a
    category mix-up, and scores rounded to 2 decimals so that ties are frequent (order decided by stable sort)."""
    rng = np.random.default_rng(seed)
    rows = []
    for a in ann["annotations"]:
        if a["category_id"] not in cats:
            continue
        x, y, w, h = a["bbox"]
        for _ in range(int(rng.integers(0, 4))):
            j = rng.normal(0, 0.12, 4) * [w, h, w, h]
            cat = a["category_id"] if rng.random() > 0.1 else int(rng.choice(cats))
            rows.append([a["image_id"], x + j[0], y + j[1], max(w + j[2], 0.5), max(h + j[3], 0.5),
                         round(rng.random(), 2), cat])
    for im in ann["images"]:
        for _ in range(int(rng.integers(0, 25))):
            w, h = rng.random() * im["width"] / 2, rng.random() * im["height"] / 2
            rows.append([im["id"], rng.random() * im["width"] / 2, rng.random() * im["height"] / 2, w, h,
                         round(rng.random(), 2), int(rng.choice(cats))])
    return np.array(rows, np.float64).reshape(-1, 7)


def _incremental(ann, rows, cats, image_ids, batch, seed=0, shuffle=True) -> dict:
    """Fed as a run feeds it: per batch of images (in a shuffled order, else in id order as a run's loader gives
    them), an image's detections split over two add() calls, then complete(); some images complete with no
    detection at all."""
    rng = np.random.default_rng(seed)
    order = sorted(image_ids)
    if shuffle:
        rng.shuffle(order)
    ev = IncrementalCocoEval(ann, cats)
    for s in range(0, len(order), batch):
        chunk = order[s:s + batch]
        mine = rows[np.isin(rows[:, 0], chunk)]
        half = len(mine) // 2
        ev.add(mine[:half])
        ev.add(mine[half:])
        ev.complete(chunk)
    return dict(zip(STAT_NAMES, ev.result(image_ids)))


def _assert_same(ours: dict, ref: dict):
    for k in STAT_NAMES:
        assert ours[k] == pytest.approx(ref[k], abs=1e-9, rel=0), k


@pytest.mark.parametrize("batch", [1, 7, 32])
def test_synthetic_all_categories(tmp_path, batch):
    _, ann_file = make_synthetic_coco(tmp_path, n_images=20, seed=5)
    ann = json.loads(ann_file.read_text())
    cats = sorted(c["id"] for c in ann["categories"])
    ids = [im["id"] for im in ann["images"]]
    rows = _hard_detections(ann, cats, seed=batch)
    ref = coco_metrics(ann, rows, ids, cats, "pycocotools")
    assert 0 < ref["AP"] < 1
    _assert_same(_incremental(ann, rows, cats, ids, batch), ref)
    # in id order the accumulation joins the blocks the matching thread gathered, instead of the per-pair results
    _assert_same(_incremental(ann, rows, cats, ids, batch, shuffle=False), ref)


def test_blocks_only_in_image_order(tmp_path):
    """Two images whose detections tie on score, one a true positive, one a false positive: pycocotools ranks the
    smaller image id's first. Matched in the other order, the blocks gathered while matching are in the wrong
    order, so the accumulation must fall back to the per-pair results sorted by image (planted: joining the
    blocks anyway gives precision 0.5 where pycocotools has 1.0)."""
    from common.evaluate.incremental import accumulate, summarize

    ann = {
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
        ],
    }
    rows = np.array([[1, 10, 10, 40, 40, 0.9, 1], [2, 60, 60, 30, 30, 0.9, 1]], np.float64)
    ref = coco_metrics(ann, rows, [1, 2], [1], "pycocotools")
    assert ref["AP50"] == pytest.approx(0.5, abs=0.01)  # recall 0.5 at precision 1.0
    for order in ([1, 2], [2, 1]):
        ev = IncrementalCocoEval(ann, [1])
        for image_id in order:
            ev.add(rows[rows[:, 0] == image_id])
            ev.complete([image_id])
        _assert_same(dict(zip(STAT_NAMES, ev.result([1, 2]))), ref)
    planted = summarize(accumulate(ev.entries, [1, 2], [1], ev.params, ev._blocks), [1, 2], [1], ev.params)
    assert planted[1] == pytest.approx(0.25, abs=0.01)  # precision 0.5 up to recall 0.5


@pytest.mark.parametrize("annotation,seed", [("instances_val2017_person_subset350.json", 1),
                                             ("instances_val2017_subset150.json", 2)])
def test_real_annotations_match_pycocotools(shared_data, annotation, seed):
    """Person subset (350 images, crowd boxes) and all 80 categories of set A: identical 12 stats."""
    ann = json.loads((shared_data / "coco" / "annotations" / annotation).read_text())
    cats = sorted(c["id"] for c in ann["categories"])
    ids = [im["id"] for im in ann["images"]]
    rows = _hard_detections(ann, cats, seed)
    ref = coco_metrics(ann, rows, ids, cats, "pycocotools")
    assert 0 < ref["AP"] < 1
    _assert_same(_incremental(ann, rows, cats, ids, 32, seed), ref)
    # evaluating a subset of the images (as --max-images does) drops the others' detections the same way
    sub = ids[: len(ids) // 3]
    _assert_same(_incremental(ann, rows, cats, sub, 16, seed), coco_metrics(ann, rows, sub, cats, "pycocotools"))



def test_blocks_only_for_every_matched_image(tmp_path):
    """Fed every image in id order (the blocks' case), then asked for a subset: the blocks hold the other images'
    pairs too, so the stats must come from the per-pair results of the subset (planted: joining the blocks of
    every matched image gives other stats than pycocotools on the subset)."""
    from common.evaluate.incremental import accumulate, summarize

    _, ann_file = make_synthetic_coco(tmp_path, n_images=20, seed=6)
    ann = json.loads(ann_file.read_text())
    cats = sorted(c["id"] for c in ann["categories"])
    ids = sorted(im["id"] for im in ann["images"])
    rows = _hard_detections(ann, cats, seed=6)
    ev = IncrementalCocoEval(ann, cats)
    for s in range(0, len(ids), 4):
        ev.add(rows[np.isin(rows[:, 0], ids[s:s + 4])])
        ev.complete(ids[s:s + 4])
    sub = ids[: len(ids) // 2]
    ref = coco_metrics(ann, rows, sub, cats, "pycocotools")
    _assert_same(dict(zip(STAT_NAMES, ev.result(sub))), ref)
    planted = dict(zip(STAT_NAMES, summarize(accumulate(ev.entries, sub, cats, ev.params, ev._blocks), sub, cats,
                                             ev.params)))
    assert any(abs(planted[k] - ref[k]) > 1e-6 for k in STAT_NAMES)

def test_comparison_is_sensitive(tmp_path):
    """Planted fault: one true positive less must show in the stats, so equality above means the matching really
    is the same."""
    _, ann_file = make_synthetic_coco(tmp_path, n_images=12, seed=3)
    ann = json.loads(ann_file.read_text())
    cats = sorted(c["id"] for c in ann["categories"])
    ids = [im["id"] for im in ann["images"]]
    rows = _hard_detections(ann, cats, seed=9)
    gt = next(a for a in ann["annotations"] if not a.get("iscrowd"))
    planted = np.vstack([rows, [[gt["image_id"], *gt["bbox"], 1.0, gt["category_id"]]]])
    ref = coco_metrics(ann, planted, ids, cats, "pycocotools")
    _assert_same(_incremental(ann, planted, cats, ids, 4), ref)
    missing_one = _incremental(ann, rows, cats, ids, 4)
    assert any(abs(missing_one[k] - ref[k]) > 1e-9 for k in STAT_NAMES)


def test_detections_after_completion_are_an_error(tmp_path):
    _, ann_file = make_synthetic_coco(tmp_path, n_images=4, seed=1)
    ann = json.loads(ann_file.read_text())
    cats = sorted(c["id"] for c in ann["categories"])
    ids = [im["id"] for im in ann["images"]]
    import common.evaluate.incremental as ie
    ev = IncrementalCocoEval(ann, cats)
    old, ie.CHUNK_IMAGES = ie.CHUNK_IMAGES, 1
    try:
        ev.complete(ids[:1])
        ev.add(np.array([[ids[0], 1, 1, 5, 5, 0.5, cats[0]]]))
        with pytest.raises(RuntimeError, match=f"image {ids[0]}"):
            ev.result(ids)
    finally:
        ie.CHUNK_IMAGES = old


def test_evaluator_engines_agree(tmp_path):
    """CocoEvaluator's default (incremental) and the pycocotools engine on the same model-label detections."""
    from common.config.specs import COCO80_TO_91
    _, ann_file = make_synthetic_coco(tmp_path, n_images=10, seed=4)
    ann = json.loads(ann_file.read_text())
    cats = sorted(c["id"] for c in ann["categories"])
    rows = _hard_detections(ann, cats, seed=4)
    ids = [im["id"] for im in ann["images"]]
    out = {}
    for engine in ("incremental", "pycocotools"):
        ev = CocoEvaluator(ann, COCO80_TO_91, engine=engine)
        xyxy = np.concatenate([rows[:, 1:3], rows[:, 1:3] + rows[:, 3:5]], axis=1)
        labels = np.array([COCO80_TO_91.index(int(c)) for c in rows[:, 6]])
        for s in range(0, len(ids), 3):
            sel = np.isin(rows[:, 0], ids[s:s + 3])
            ev.add(rows[sel, 0], xyxy[sel], rows[sel, 5], labels[sel])
            ev.complete(ids[s:s + 3])
        out[engine] = ev.evaluate(ids)
    assert ev.engine == "pycocotools"
    _assert_same(out["incremental"], out["pycocotools"])


def _pycocotools_accumulated(ann: dict, rows: np.ndarray, ids, cats) -> dict:
    import contextlib
    import io
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(ann))
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(rows), "bbox")
        ev.params.imgIds, ev.params.catIds = sorted(ids), list(cats)
        ev.evaluate()
        ev.accumulate()
    return ev.eval


@pytest.mark.parametrize("annotation,seed", [("instances_val2017_person_subset350.json", 3),
                                             ("instances_val2017_subset150.json", 4), (None, 5)])
def test_accumulated_curves_are_pycocotools_bit_for_bit(shared_data, tmp_path, monkeypatch, annotation, seed):
    """Not only the 12 stats: every precision, recall and score pycocotools' accumulate() gives, with ==, so a
    difference of one rounding (an epsilon left out) or in the scores (which the stats never read) is seen."""
    if annotation is None:
        _, ann_file = make_synthetic_coco(tmp_path, n_images=20, seed=seed)
        ann = json.loads(ann_file.read_text())
    else:
        ann = json.loads((shared_data / "coco" / "annotations" / annotation).read_text())
    cats = sorted(c["id"] for c in ann["categories"])
    ids = [im["id"] for im in ann["images"]]
    rows = _hard_detections(ann, cats, seed)
    ref = _pycocotools_accumulated(ann, rows, ids, cats)
    # all at once (one block), and in chunks of 16 images gathered into runs of >= 200 detections that are joined
    # while matching and at the end (as 5000 images are with the default size)
    for chunk, run_detections in ((len(ids), inc.RUN_DETECTIONS), (16, 200)):
        monkeypatch.setattr(inc, "RUN_DETECTIONS", run_detections)
        ev = IncrementalCocoEval(ann, cats)
        for s in range(0, len(ids), chunk):
            ev.add(rows[np.isin(rows[:, 0], ids[s:s + chunk])])
            ev.complete(ids[s:s + chunk])
        ev.result(ids)
        for name in ("precision", "recall", "scores"):
            assert ev.accumulated[name].shape == ref[name].shape
            assert np.array_equal(ev.accumulated[name], ref[name]), (name, chunk)
