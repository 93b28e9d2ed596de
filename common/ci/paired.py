"""Accuracy against a reference run judged by the paired bootstrap interval of the difference, where both runs'
detections are at hand (common/evaluate/bootstrap.py).

A drop is a regression when the 95 % interval of candidate - reference lies wholly below 0 (the data show a
drop, not noise) and the drop itself exceeds the margin the rule allows (the relative rule's points, or the
evaluator's floor against a baseline: a real but negligible shift, as FP16 kernels give, is no regression). An
interval that includes 0 passes: the run is consistent with the reference. Without both detections the caller
keeps today's rule (common/ci/acc_tolerance.py) and says so.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from common.errors import InputError

PAIRED = "paired bootstrap interval"
# Below this many images the percentile bootstrap is too coarse to decide (at 16 images a 15-point drop carried by
# a few images still has an interval reaching above 0): the fixed rule judges, and the verdict says why.
MIN_IMAGES = 50


def _rows(path: Path) -> np.ndarray:
    try:
        raw = Path(path).read_bytes()
        dets = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
        return np.array([[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in dets], np.float64).reshape(
            -1, 7
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"unreadable detections file ({exc})", path) from None


def run_images(annotations: dict, num_images: int) -> list[int]:
    """The images an accuracy run of `num_images` evaluated: the annotation file's first N by id."""
    return sorted(int(im["id"]) for im in annotations["images"])[:num_images]


def paired_from_files(
    candidate_dets, reference_dets, record: dict, resamples: int = 1000, metrics=("AP", "AP50")
) -> dict:
    """The paired interval of candidate - reference (AP, AP50) from two detections files of runs on the images
    of `record` (its dataset's annotation, image count and categories)."""
    from common.evaluate.bootstrap import MatchTable, paired_interval

    ann_path = Path(record["dataset"]["annotation"])
    try:
        annotations = json.loads(ann_path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"unreadable annotation file ({exc})", ann_path) from None
    ids = run_images(annotations, record["dataset"]["num_images"])
    if len(ids) < MIN_IMAGES:
        raise ValueError(f"{len(ids)} images are too few for a bootstrap interval (at least {MIN_IMAGES})")
    cats = record["dataset"]["categories"]
    cand = MatchTable.from_rows(annotations, _rows(candidate_dets), ids, cats)
    ref = MatchTable.from_rows(annotations, _rows(reference_dets), ids, cats)
    out = paired_interval(cand, ref, resamples, metrics=tuple(metrics))
    assert cand.point is not None and ref.point is not None  # from_rows scores the run itself
    out["point"] = {m: cand.point[m] - ref.point[m] for m in out["diff"]}
    return out


def judge_paired(metric: str, paired: dict, margin_points: float) -> tuple[bool, bool, str]:
    """(regression, significant rise, message) of one metric's paired interval (0-1 scale) with the margin in
    AP points."""
    lo, hi = (v * 100 for v in paired["diff"][metric])
    d = paired["point"][metric] * 100
    drop = hi < 0 and -d > margin_points + 1e-9
    rise = lo > 0 and d > margin_points + 1e-9
    where = "excludes 0" if hi < 0 or lo > 0 else "includes 0"
    text = (
        f"{metric} {d:+.2f} points, 95 % paired interval [{lo:+.2f}, {hi:+.2f}] {where} "
        f"({paired['resamples']} resamples of {paired['images']} images; margin {margin_points:g} points)"
    )
    return drop, rise, text
