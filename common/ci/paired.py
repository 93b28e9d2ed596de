"""Accuracy against a reference run judged by the paired bootstrap interval of the difference, where both runs'
detections are at hand (common/evaluate/bootstrap.py).

A drop is a regression when the 95 % interval of candidate - reference lies wholly below 0 (the data show a
drop, not noise) and the drop itself exceeds the margin the rule allows (the relative rule's points, or the
evaluator's floor against a baseline: a real but negligible shift, as FP16 kernels give, is no regression). An
interval that includes 0 passes: the run is consistent with the reference. Without both detections the caller
keeps today's rule (common/ci/acc_tolerance.py) and says so.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from common.errors import InputError

PAIRED = "paired bootstrap interval"
# Below this many images the percentile bootstrap is too coarse to decide (at 16 images a 15-point drop carried by
# a few images still has an interval reaching above 0): the fixed rule judges, and the verdict says why.
MIN_IMAGES = 50


def _rows(path: Path) -> np.ndarray:
    from common.evaluate.detections_file import read_rows

    try:
        return read_rows(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"unreadable detections file ({exc})", path) from None


def run_images(annotations: dict, num_images: int) -> list[int]:
    """The images an accuracy run of `num_images` evaluated: the annotation file's first N by id."""
    return sorted(int(im["id"]) for im in annotations["images"])[:num_images]


def _stamp(path: Path) -> tuple:
    st = Path(path).stat()
    return str(Path(path).resolve()), st.st_size, st.st_mtime_ns


@lru_cache(maxsize=2)
def _annotations(stamp: tuple) -> dict:
    path = Path(stamp[0])
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"unreadable annotation file ({exc})", path) from None


# A regression run pairs a detections file more than once (the FP32 run with its baseline and with every reduced
# precision of the same run): at 5000 images x 300 detections one matching is ~14 s, kept for the next pairing.
# Keyed by the files' path, size and modification time, so a file written again is matched again.
@lru_cache(maxsize=4)
def _table(dets_stamp: tuple, ann_stamp: tuple, num_images: int, cats: tuple):
    from common.evaluate.bootstrap import MatchTable

    annotations = _annotations(ann_stamp)
    return MatchTable.from_rows(annotations, _rows(Path(dets_stamp[0])), run_images(annotations, num_images), cats)


def paired_from_files(
    candidate_dets, reference_dets, record: dict, resamples: int = 1000, metrics=("AP", "AP50")
) -> dict:
    """The paired interval of candidate - reference (AP, AP50) from two detections files of runs on the images
    of `record` (its dataset's annotation, image count and categories)."""
    from common.evaluate.bootstrap import paired_interval

    ann_path = Path(record["dataset"]["annotation"])
    try:
        ann_stamp = _stamp(ann_path)
    except OSError as exc:
        raise InputError(f"unreadable annotation file ({exc})", ann_path) from None
    n = record["dataset"]["num_images"]
    if len(run_images(_annotations(ann_stamp), n)) < MIN_IMAGES:
        raise ValueError(
            f"{len(run_images(_annotations(ann_stamp), n))} images are too few for a bootstrap interval "
            f"(at least {MIN_IMAGES})"
        )
    cats = tuple(record["dataset"]["categories"])
    tables = []
    for dets in (candidate_dets, reference_dets):
        try:
            stamp = _stamp(dets)
        except OSError as exc:
            raise InputError(f"unreadable detections file ({exc})", dets) from None
        tables.append(_table(stamp, ann_stamp, n, cats))
    cand, ref = tables
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
