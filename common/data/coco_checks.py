"""Structural checks of a COCO detection annotation file, done when it is read, before any inference.

Both COCO evaluators index annotations by `id` and images by `id`: a repeated or missing id is silently
overwritten (a different AP) or a KeyError after the whole inference. They also treat fields differently when
they are missing (faster-coco-eval fills `iscrowd`/`area`, pycocotools raises), so every field the evaluators
read is required here and the two engines always see the same, complete input. Each refusal names the file
(through the InputError path) and the entry and field at fault.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from common.errors import InputError

COCO_CHECKS = 2  # the version of these checks: change it when they change (a remembered pass is then redone)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_coco(data, path: Path) -> None:
    """Raise InputError(path) for the first defect of a parsed COCO detection annotation file."""
    if not isinstance(data, dict):
        raise InputError("not a COCO annotation file: top level is not an object", path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(f"not a COCO annotation file: '{key}' missing or not a list", path)
    categories = set()
    for i, c in enumerate(data["categories"]):
        if not (isinstance(c, dict) and _is_int(c.get("id"))):
            raise InputError(f"categories[{i}] needs an integer 'id'", path)
        if c["id"] in categories:
            raise InputError(f"categories[{i}]: 'id' {c['id']} is repeated", path)
        categories.add(c["id"])
    images = set()
    names: dict = {}  # normalised file name -> (index, id) of its first listing
    for i, img in enumerate(data["images"]):
        if not (
            isinstance(img, dict)
            and _is_int(img.get("id"))
            and isinstance(img.get("file_name"), str)
            and _is_int(img.get("width"))
            and _is_int(img.get("height"))
        ):
            raise InputError(f"images[{i}] needs integer id/width/height and a file_name", path)
        if img["width"] < 1 or img["height"] < 1:
            raise InputError(
                f"images[{i}]: 'width'/'height' must be positive, got {img['width']}x{img['height']}", path
            )
        if img["id"] in images:
            # evaluated twice, it would weigh twice in the AP (or be dropped, depending on the evaluator)
            raise InputError(f"images[{i}]: 'id' {img['id']} is repeated", path)
        images.add(img["id"])
        # one file under two ids is evaluated twice (its boxes weigh twice in the AP)
        name = os.path.normpath(img["file_name"])
        if name in names:
            j, first = names[name]
            raise InputError(
                f"images[{i}]: 'file_name' {img['file_name']!r} (id {img['id']}) is the file of "
                f"images[{j}] (id {first}) too: the same image would be evaluated twice",
                path,
            )
        names[name] = (i, img["id"])
    ann_ids = set()
    for i, a in enumerate(data["annotations"]):
        if not (isinstance(a, dict) and isinstance(a.get("bbox"), list) and len(a["bbox"]) == 4):
            raise InputError(f"annotations[{i}] has no 4-number bbox", path)
        if not all(_is_number(v) for v in a["bbox"]):
            raise InputError(f"annotations[{i}]: 'bbox' {a['bbox']!r} is not 4 finite numbers", path)
        if a["bbox"][2] < 0 or a["bbox"][3] < 0:
            raise InputError(f"annotations[{i}]: 'bbox' {a['bbox']!r} has a negative width or height", path)
        if a.get("image_id") not in images:
            raise InputError(
                f"annotations[{i}] refers to image_id {a.get('image_id')!r}, which is not in 'images'", path
            )
        if not _is_int(a.get("id")):
            raise InputError(f"annotations[{i}] has no integer 'id' (the evaluators index annotations by it)", path)
        if a["id"] in ann_ids:
            raise InputError(f"annotations[{i}]: 'id' {a['id']} is repeated (the evaluators would keep only one)", path)
        ann_ids.add(a["id"])
        if not _is_int(a.get("category_id")) or a["category_id"] not in categories:
            raise InputError(f"annotations[{i}]: 'category_id' {a.get('category_id')!r} is not in 'categories'", path)
        if a.get("iscrowd") not in (0, 1) or isinstance(a.get("iscrowd"), bool):
            raise InputError(
                f"annotations[{i}]: 'iscrowd' must be 0 or 1, got {a.get('iscrowd')!r} (the two "
                "evaluators treat a missing one differently)",
                path,
            )
        if not _is_number(a.get("area")) or a["area"] < 0:
            raise InputError(
                f"annotations[{i}]: 'area' must be a number >= 0, got {a.get('area')!r} (the two "
                "evaluators treat a missing one differently)",
                path,
            )


def drop_zero_area(data: dict, path: Path) -> dict:
    """The annotation file without its zero-area ground-truth boxes (width or height 0), with a warning naming
    them. A documented choice (docs/robustness.md): such a box overlaps no detection (IoU 0), so it can only
    count as a miss and lower the recall and AP of any model; dropping it, loudly, measures the model on the
    boxes that can be found. Done at every read, after the remembered parse, so the warning is never lost."""
    zero = [a for a in data["annotations"] if a["bbox"][2] == 0 or a["bbox"][3] == 0]
    if not zero:
        return data
    ids = ", ".join(str(a["id"]) for a in zero[:10]) + (", ..." if len(zero) > 10 else "")
    print(
        f"warning: {path}: {len(zero)} ground-truth box(es) of zero width or height dropped (they can never be "
        f"matched, only counted as misses): annotation id(s) {ids}",
        file=sys.stderr,
    )
    dropped = {id(a) for a in zero}
    return {**data, "annotations": [a for a in data["annotations"] if id(a) not in dropped]}
