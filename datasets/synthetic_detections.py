"""Annotations and detections generated in memory, for the bootstrap's tests and benchmark: objects of every COCO
size range, crowd regions, images without objects; detections that miss, duplicate and mislabel some objects, plus
false positives, with continuous scores. `materialise` builds the resampled data set itself (each image copied as
often as a resample draws it), which pycocotools then evaluates as the brute-force reference."""
from __future__ import annotations

import numpy as np


def synthetic_annotations(n_images: int, categories=(1, 2, 3), seed: int = 0, max_objects: int = 5) -> dict:
    """COCO instances with objects of every size range, crowd regions and images without any object."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n_images):
        w, h = int(rng.integers(200, 640)), int(rng.integers(200, 640))
        images.append({"id": 100 + 3 * i, "width": w, "height": h, "file_name": f"{i}.jpg"})
        for _ in range(int(rng.integers(0, max_objects + 1))):
            side = float(rng.choice([12, 40, 110])) * rng.uniform(0.6, 1.3)
            bw, bh = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            crowd = int(rng.random() < 0.05)
            anns.append({"id": len(anns) + 1, "image_id": 100 + 3 * i, "category_id": int(rng.choice(categories)),
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": crowd})
    return {"images": images, "annotations": anns,
            "categories": [{"id": c, "name": f"c{c}"} for c in categories]}


def synthetic_detections(ann: dict, seed: int = 0, misses: float = 0.2, jitter: float = 0.1,
                         per_image: int | None = None) -> np.ndarray:
    """Rows (image_id, x, y, w, h, score, category): jittered ground truth (some missed, some duplicated, some of
    the wrong class) and random false positives (0-7 per image, or as many as fill `per_image` detections);
    continuous scores (no ties)."""
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in ann["categories"]]
    rows = []
    for a in ann["annotations"]:
        x, y, w, h = a["bbox"]
        for _ in range(int(rng.random() > misses) + int(rng.random() < 0.2)):
            j = rng.normal(0, jitter, 4) * [w, h, w, h]
            cat = a["category_id"] if rng.random() > 0.1 else int(rng.choice(cats))
            rows.append([a["image_id"], x + j[0], y + j[1], max(w + j[2], 1), max(h + j[3], 1),
                         rng.uniform(0.2, 1.0), cat])
    have = np.bincount(np.array([r[0] for r in rows], np.int64)) if rows else np.zeros(1, np.int64)
    fps = []
    for im in ann["images"]:
        n = int(rng.integers(0, 8)) if per_image is None else \
            max(0, per_image - int(have[im["id"]] if im["id"] < len(have) else 0))
        w, h = rng.uniform(5, im["width"] / 2, n), rng.uniform(5, im["height"] / 2, n)
        fps.append(np.stack([np.full(n, im["id"]), rng.uniform(0, 1, n) * (im["width"] - w),
                             rng.uniform(0, 1, n) * (im["height"] - h), w, h, rng.uniform(0.0, 0.7, n),
                             rng.choice(cats, n)], axis=1))
    return np.concatenate([np.array(rows, np.float64).reshape(-1, 7)] + fps)


def materialise(ann: dict, rows: np.ndarray, counts: np.ndarray):
    """The resampled data set itself: image k drawn counts[k] times, each copy a new image."""
    ids = sorted(im["id"] for im in ann["images"])
    by_id = {im["id"]: im for im in ann["images"]}
    images, anns, dets = [], [], []
    new_id = 1
    for k, image_id in enumerate(ids):
        for _ in range(int(counts[k])):
            images.append({**by_id[image_id], "id": new_id})
            for a in ann["annotations"]:
                if a["image_id"] == image_id:
                    anns.append({**a, "id": len(anns) + 1, "image_id": new_id})
            mine = rows[rows[:, 0] == image_id].copy()
            mine[:, 0] = new_id
            dets.append(mine)
            new_id += 1
    return ({"images": images, "annotations": anns, "categories": ann["categories"]},
            np.concatenate(dets) if dets else np.zeros((0, 7)), list(range(1, new_id)))
