"""The outputs a performance run timed, checked against what the accuracy run computed on the same image.

A speed figure is only worth something if the timed engine computes what the evaluated one did: an engine
that skips work (a wrong batch size compiled, a stale cache entry, an SDK that drops a branch) is fast and
wrong, and NaN/Inf checks do not see it. The performance run keeps the decoded detections of the first image
it timed (`timed_detections` in its record); the regression verdict matches them against the accuracy run's
detections of that image (same model, variant, backend and precision; COCO results written with
--save-detections), both ways, by label and IoU (common/compare/comparator.match_detections).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

KEEP = 100  # detections kept in the record (the highest scores)
SCORE_KEEP = 0.05  # ... and at least this score: enough room for the matcher's score noise
SCORE_JUDGE = 0.3  # detections at or above this score must find their partner
IOU_MIN = 0.5
MIN_MATCHED = 0.8  # fraction of judged detections that must match, in each direction


def timed_detections(variant, outputs: dict, meta_row: np.ndarray, image_id: int, batch_size: int) -> dict:
    """Decoded detections of batch element 0 of a timed call, boxes in original pixels (xyxy), COCO category
    ids. Raises whatever the decoder raises (the caller records why there are none)."""
    from common.decode.outputs import get_decoder

    first = {k: (v[:1] if getattr(v, "ndim", 0) and v.shape[0] == batch_size else v) for k, v in outputs.items()}
    _, boxes, scores, labels = get_decoder(variant.output)(first, np.asarray(meta_row)[None], variant.decode_cfg)
    keep = np.isfinite(boxes).all(axis=1) & np.isfinite(scores) & (scores >= SCORE_KEEP)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep].astype(np.int64)
    order = np.argsort(-scores, kind="stable")[:KEEP]
    cats = np.asarray(variant.label_map, np.int64)[labels[order]]
    return {
        "image_id": int(image_id),
        "boxes": np.round(boxes[order], 3).tolist(),
        "scores": np.round(scores[order], 5).tolist(),
        "categories": cats.tolist(),
    }


def from_timing_sample(variant, outputs: dict, items: list | None, batch_size: int) -> dict:
    """timed_detections() of the first timed image, or {"reason": why none} (random inputs, an output the
    decoder cannot read): recorded either way, never failing the performance run itself."""
    if not items:
        return {"reason": "timed on random inputs: no image to compare"}
    try:
        from common.data.coco import read_image
        from common.data.preprocess import Preprocessor

        _, meta = Preprocessor(variant.preprocess, variant.height, variant.width)(read_image(items[0].path))
        return timed_detections(variant, outputs, meta, items[0].image_id, batch_size)
    except Exception as exc:  # noqa: BLE001 -- the figure stands; the verdict says the check could not run
        return {"reason": f"timed outputs not decodable ({type(exc).__name__}: {str(exc)[:200]})"}


def accuracy_detections(path: Path, image_id: int) -> tuple:
    """(boxes xyxy, scores, category ids) of one image from a COCO results JSON file."""
    rows = [r for r in json.loads(Path(path).read_text()) if r["image_id"] == image_id]
    boxes = np.array(
        [[r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]] for r in rows],
        np.float64,
    ).reshape(-1, 4)
    return boxes, np.array([r["score"] for r in rows], np.float64), np.array([r["category_id"] for r in rows], np.int64)


def compare(timed: dict, accuracy: tuple) -> tuple[bool, str, dict]:
    """(consistent, message, numbers): the timed detections against the accuracy run's, both directions."""
    from common.compare.comparator import match_detections  # not on the performance run's start-up path

    cand = (
        np.array(timed["boxes"], np.float64).reshape(-1, 4),
        np.array(timed["scores"], np.float64),
        np.array(timed["categories"], np.int64),
    )
    fractions = {}
    for name, ref, other in (("accuracy->timed", accuracy, cand), ("timed->accuracy", cand, accuracy)):
        pairs = match_detections(ref, other, SCORE_JUDGE, IOU_MIN)
        fractions[name] = (sum(p is not None for p in pairs), len(pairs))
    worst = min((m / n if n else 1.0) for m, n in fractions.values())
    text = (
        f"image {timed['image_id']}: "
        + ", ".join(f"{k} {m}/{n}" for k, (m, n) in fractions.items())
        + f" detections (score >= {SCORE_JUDGE}) matched at IoU >= {IOU_MIN}"
    )
    return worst >= MIN_MATCHED, text, {"timed_output_match": worst}
