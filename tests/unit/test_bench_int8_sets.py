"""scripts/bench_int8.py's image sets: B's halves split it in two disjoint parts, and calibration images that are
evaluation images are refused (exit 2) before anything is built. On a synthetic shared-data layout (file names
and annotation records only: nothing here decodes an image)."""
from __future__ import annotations

import importlib.util
import json

import pytest
from helpers import REPO

from common.errors import ConfigError


def _bench():
    spec = importlib.util.spec_from_file_location("bench_int8_script", REPO / "scripts" / "bench_int8.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shared(tmp_path, bench, n_a=3, n_b=6):
    ann, images = tmp_path / "coco" / "annotations", tmp_path / "coco" / "val2017"
    ann.mkdir(parents=True)
    images.mkdir()
    cats = [{"id": 1, "name": "person"}]
    for name, first, n in ((bench.SET_A, 100, n_a), (bench.SET_B, 500, n_b)):
        # ids out of file-name order, so a split by name and one by id differ
        recs = [{"id": first + (7 * i) % n, "file_name": f"{first + i:012d}.jpg", "width": 4, "height": 4}
                for i in range(n)]
        anns = [{"id": r["id"], "image_id": r["id"], "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4,
                 "iscrowd": 0} for r in recs]
        (ann / name).write_text(json.dumps({"images": recs, "annotations": anns, "categories": cats}))
        for r in recs:
            (images / r["file_name"]).write_bytes(b"not decoded here")
    return tmp_path


def test_the_halves_of_set_b_split_it_by_image_id(tmp_path):
    bench = _bench()
    shared = _shared(tmp_path, bench)
    whole = bench._set_annotations(shared, "B")
    b1, b2 = (bench._set_annotations(shared, h) for h in ("B1", "B2"))
    ids1, ids2 = ({im["id"] for im in h["images"]} for h in (b1, b2))
    assert len(ids1) == len(ids2) == 3 and not ids1 & ids2
    assert ids1 | ids2 == {im["id"] for im in whole["images"]} and max(ids1) < min(ids2)
    assert {a["image_id"] for a in b1["annotations"]} == ids1  # each half's records are its own images'


def test_calibration_on_evaluation_images_is_refused_and_disjoint_sets_are_taken(tmp_path):
    from common.config.specs import load_model
    bench = _bench()
    shared = _shared(tmp_path, bench)
    variant = load_model("rtmdet").variant()
    for calib, ev in (("B", "B1"), ("A+B1", "B1"), ("A+B2", "B2"), ("A", "A")):
        ann = bench._eval_annotation(shared, ev, tmp_path)
        with pytest.raises(ConfigError, match=f"calibration image.*evaluation set {ev}") as exc:
            bench._calibration(shared, tmp_path / f"c_{calib}_{ev}", calib, ev, ann, 200, variant)
        assert exc.value.exit_code == 2
    ann = bench._eval_annotation(shared, "B1", tmp_path)
    cal = bench._calibration(shared, tmp_path / "c_ok", "A+B2", "B1", ann, 200, variant)
    b2 = {im["file_name"] for im in bench._set_annotations(shared, "B2")["images"]}
    a = {im["file_name"] for im in bench._set_annotations(shared, "A")["images"]}
    assert {p.name for p in cal.images} == a | b2
    assert len(bench._calibration(shared, tmp_path / "c_two", "A", "B1", ann, 2, variant).images) == 2
    with pytest.raises(ConfigError, match="expected A, B, B1, B2"):
        bench._set_names("A+C", "calibration")
