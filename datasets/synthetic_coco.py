"""A faithful miniature COCO dataset for tests that must not need the real images.

Each image is a JPEG with filled rectangles of known classes on a textured background; the annotation file is
in the official instances format (images / annotations / categories with COCO's own ids), so everything that
reads COCO reads it unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path

import runpy

import cv2
import numpy as np

runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "ixuca_suite.py"))  # the one bootstrap
from common.config.specs import COCO80_TO_91  # noqa: E402


def make_synthetic_coco(root: str | Path, n_images: int = 8, seed: int = 0, max_objects: int = 4,
                        categories=(1, 3, 18), min_side: int = 200, max_side: int = 640, size=None):
    """Write <root>/images/val2017/*.jpg and <root>/annotations/instances_val2017.json.

    Returns (images_dir, ann_file). Sizes (unless `size` = (height, width) fixes them), aspect ratios and boxes
    are random but reproducible from the seed.
    """
    root = Path(root)
    images_dir = root / "images" / "val2017"
    ann_dir = root / "annotations"
    images_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(n_images):
        image_id = i + 1
        w, h = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        if size is not None:
            h, w = size
        img = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
        for _ in range(int(rng.integers(1, max_objects + 1))):
            bw, bh = int(rng.integers(12, max(13, w // 2))), int(rng.integers(12, max(13, h // 2)))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            color = tuple(int(c) for c in rng.integers(120, 256, size=3))
            cv2.rectangle(img, (x, y), (x + bw - 1, y + bh - 1), color, thickness=-1)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(rng.choice(categories)), "bbox": [x, y, bw, bh],
                                "area": float(bw * bh), "iscrowd": 0, "segmentation": []})
        name = f"{image_id:012d}.jpg"
        cv2.imwrite(str(images_dir / name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
    cats = [{"id": c, "name": f"class{c}", "supercategory": "synthetic"} for c in COCO80_TO_91]
    ann_file = ann_dir / "instances_val2017.json"
    ann_file.write_text(json.dumps({"info": {"description": "synthetic"}, "images": images,
                                    "annotations": annotations, "categories": cats}))
    return images_dir, ann_file


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("root")
    ap.add_argument("--n-images", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(*make_synthetic_coco(a.root, a.n_images, a.seed))
