"""A small synthetic COCO-layout dataset: images with drawn rectangles and a matching annotation file.

Used by tests that need a dataset without the real COCO images. Boxes are exact (they are what was drawn),
so a perfect detector scores AP 1.0 on it.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}, {"id": 3, "name": "car"}]


def make_synthetic_coco(root, n_images: int = 8, seed: int = 0, size: tuple[int, int] = (96, 128),
                        max_boxes: int = 3) -> tuple[Path, Path]:
    """Write `root`/images/val2017/*.jpg and `root`/annotations/instances_val2017.json; returns both paths."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    images_dir = root / "images" / "val2017"
    ann_dir = root / "annotations"
    images_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    h, w = size
    images, annotations = [], []
    for i in range(n_images):
        image_id = i + 1
        img = np.full((h, w, 3), 40, np.uint8)
        for _ in range(int(rng.integers(1, max_boxes + 1))):
            bw, bh = int(rng.integers(8, w // 2)), int(rng.integers(8, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            color = tuple(int(c) for c in rng.integers(100, 256, 3))
            cv2.rectangle(img, (x, y), (x + bw - 1, y + bh - 1), color, thickness=-1)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(rng.choice([c["id"] for c in CATEGORIES])),
                                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
        name = f"{image_id:012d}.jpg"
        cv2.imwrite(str(images_dir / name), img)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
    ann_file = ann_dir / "instances_val2017.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return images_dir, ann_file
