"""datasets/full_scale.py: the val2017-sized set built from the shared images, on which scale figures are taken."""
from __future__ import annotations

import json

from full_scale import FIRST_ID, build_full_scale
from helpers import detections_ap

from conftest import PERSON350


def test_repeated_set_has_new_ids_and_the_source_sets_ap(shared_data, rtmdet_fp32_pass, tmp_path):
    ann = build_full_scale(tmp_path / "set", shared_data / "coco", PERSON350, n_images=700)
    data = json.loads(ann.read_text())
    src = json.loads((shared_data / "coco" / "annotations" / PERSON350).read_text())
    ids = [im["id"] for im in data["images"]]
    assert ids == list(range(FIRST_ID, FIRST_ID + 700))
    assert len({im["file_name"] for im in data["images"]}) == 700
    assert all((tmp_path / "set" / "images" / "val2017" / im["file_name"]).is_file() for im in data["images"])
    assert len(data["annotations"]) == 2 * len(src["annotations"])
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
    # image i of the new set is source image i mod 350: the FP32 pass's detections, moved to the new ids of both
    # copies, must score what they score on the source set (COCO AP is per-image matching pooled over images)
    new_ids = {}
    for i, im in enumerate(data["images"]):
        new_ids.setdefault(src["images"][i % len(src["images"])]["id"], []).append(im["id"])
    dets = json.loads(rtmdet_fp32_pass.detections.read_text())
    moved = [{**d, "image_id": n} for d in dets for n in new_ids[d["image_id"]]]
    (tmp_path / "dets.json").write_text(json.dumps(moved))
    source_ap = detections_ap(rtmdet_fp32_pass.detections, shared_data / "coco" / "annotations" / PERSON350)
    repeated_ap = detections_ap(tmp_path / "dets.json", ann)
    assert abs(repeated_ap["AP"] - source_ap["AP"]) < 5e-4, (repeated_ap, source_ap)
    assert abs(repeated_ap["AP50"] - source_ap["AP50"]) < 5e-4, (repeated_ap, source_ap)
    assert build_full_scale(tmp_path / "set", shared_data / "coco", PERSON350, n_images=700) == ann  # reused
