"""Detections -> COCO metrics.

Three engines give the same 12 stats: pycocotools (the reference implementation), faster-coco-eval (the same
algorithm in C++, several times faster on large runs) and "incremental" (the default, common/evaluate/incremental.py:
pycocotools' matching done image by image while the run still infers, only the accumulation after the last image).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from common.errors import ConfigError, InputError
from common.metric_table import COCO_STATS, metric

STAT_NAMES = COCO_STATS  # the 12 COCO stats in pycocotools' order (common/metric_table.py)
STAT_LABELS = tuple(metric(name).description for name in STAT_NAMES)


def _coco_from_dict(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class DetectionStore:
    """Detections of a run kept compactly: one float64 row per box (image_id, x, y, w, h, score, category)."""

    def __init__(self):
        self._chunks: list[np.ndarray] = []
        self._categories: set = set()

    def add(self, image_ids: np.ndarray, boxes_xyxy: np.ndarray, scores: np.ndarray, categories: np.ndarray):
        """Keep a batch's detections (xyxy boxes, COCO category ids) as xywh rows."""
        rows = np.empty((len(scores), 7), np.float64)
        rows[:, 0] = image_ids
        rows[:, 1:3] = boxes_xyxy[:, :2]
        rows[:, 3:5] = boxes_xyxy[:, 2:4] - boxes_xyxy[:, :2]
        rows[:, 5] = scores
        rows[:, 6] = categories
        self.append(rows)
        return rows

    def append(self, rows: np.ndarray):
        """Keep rows already in this layout."""
        self._chunks.append(rows)
        if len(rows):
            # per batch, so that the coverage after the last image needs no pass over every row
            self._categories.update(int(c) for c in np.unique(rows[:, 6]).tolist())

    def categories(self) -> set:
        """The category ids of the kept rows."""
        return set(self._categories)

    def rows(self) -> np.ndarray:
        """Every kept row, [N, 7] float64."""
        return np.concatenate(self._chunks) if self._chunks else np.empty((0, 7), np.float64)

    def __len__(self):
        return sum(len(c) for c in self._chunks)


def to_coco_results(rows: np.ndarray) -> list[dict]:
    """Rows -> the COCO results JSON format (list of dicts)."""
    # Columns to Python numbers once (tolist) rather than int()/float() per value: 4x faster on 15k boxes, the
    # same numbers (astype(int64) truncates as int() does).
    rows = np.asarray(rows, np.float64).reshape(-1, 7)
    ids, cats = rows[:, 0].astype(np.int64).tolist(), rows[:, 6].astype(np.int64).tolist()
    return [
        {"image_id": i, "category_id": c, "bbox": box, "score": score}
        for i, c, box, score in zip(ids, cats, rows[:, 1:5].tolist(), rows[:, 5].tolist())
    ]


_RESULT = '{"image_id": %d, "category_id": %d, "bbox": [%r, %r, %r, %r], "score": %r}'


def coco_results_json(rows: np.ndarray) -> str:
    """json.dumps(to_coco_results(rows)), the same text, made by one %-format over all the rows: no dict per box
    and no JSON encoder (half the time; the floats' repr, which both spend most of it on, is the same call)."""
    rows = np.asarray(rows, np.float64).reshape(-1, 7)
    if not np.isfinite(rows[:, 1:6]).all():  # JSON's NaN / Infinity are not repr's nan / inf
        import json

        return json.dumps(to_coco_results(rows))
    columns = (
        rows[:, 0].astype(np.int64).tolist(),
        rows[:, 6].astype(np.int64).tolist(),
        *(rows[:, k].tolist() for k in (1, 2, 3, 4, 5)),
    )
    values = tuple(v for row in zip(*columns) for v in row)
    return "[" + ", ".join([_RESULT] * len(rows)) % values + "]"


ENGINES = ("incremental", "faster-coco-eval", "pycocotools")


def default_engine() -> str:
    return "incremental"


class CocoEvaluator:
    def __init__(self, annotations: dict, label_map, categories=None, engine: str | None = None, source=None):
        """`source`: the annotation file, named by the errors about it."""
        self.annotations = annotations
        self.engine = engine or default_engine()
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown COCO evaluator {self.engine!r}; known: {', '.join(ENGINES)}")
        self.label_map = np.asarray(label_map, np.int64)
        known = {c["id"] for c in annotations["categories"]}
        self.categories = sorted(categories) if categories else sorted(known)
        unknown = [c for c in self.categories if c not in known]
        if unknown:
            raise InputError(
                f"'categories': {unknown} to evaluate (the model spec's evaluation.categories) are not "
                "in the annotation file",
                source,
            )
        self.store = DetectionStore()
        self._keep = np.isin(self.label_map, self.categories)  # per model label: evaluated or not
        self._incremental = None
        if self.engine == "incremental":
            from common.evaluate.incremental import IncrementalCocoEval

            self._incremental = IncrementalCocoEval(annotations, self.categories)

    def add(self, image_ids, boxes_xyxy, scores, labels):
        """Flat detections (one entry per box) with model labels; mapped to COCO ids, other categories dropped.
        Returns the rows kept (DetectionStore's layout)."""
        labels = np.asarray(labels, np.int64)
        bad = (labels < 0) | (labels >= len(self.label_map))
        if bad.any():
            raise InputError(
                f"the model produced label {int(labels[bad][0])}, outside the spec's label map "
                f"of {len(self.label_map)} classes"
            )
        cats = self.label_map[labels]
        keep = self._keep[labels]
        rows = self.store.add(
            np.asarray(image_ids)[keep], np.asarray(boxes_xyxy)[keep], np.asarray(scores)[keep], cats[keep]
        )
        if self._incremental is not None:
            self._incremental.add(rows)
        return rows

    def add_rows(self, rows: np.ndarray):
        """Rows another run's DetectionStore kept (COCO category ids already): the shards of a merge."""
        rows = np.asarray(rows, np.float64).reshape(-1, 7)
        self.store.append(rows)
        if self._incremental is not None:
            self._incremental.add(rows)

    def complete(self, image_ids):
        """These images will get no more detections: the incremental engine may match them now."""
        if self._incremental is not None:
            self._incremental.complete(image_ids)

    def close(self):
        """Stop background matching (a run that ends without evaluating)."""
        if self._incremental is not None:
            self._incremental.close()

    def evaluate(self, image_ids) -> dict:
        """The 12 COCO stats over image_ids: the incremental engine's, else one pass of the configured engine."""
        if self._incremental is not None:
            return {name: float(v) for name, v in zip(STAT_NAMES, self._incremental.result(image_ids))}
        return coco_metrics(self.annotations, self.store.rows(), image_ids, self.categories, self.engine)

    @property
    def incremental(self):
        """The incremental engine (its per-pair matches feed the bootstrap), None for the other engines."""
        return self._incremental

    def accumulated(self):
        """pycocotools' accumulate() arrays of the incremental engine after evaluate() (None for the others)."""
        return getattr(self._incremental, "accumulated", None)


def coco_metrics(annotations: dict, rows: np.ndarray, image_ids, categories, engine: str = "pycocotools") -> dict:
    """The 12 standard COCO bbox stats for detections `rows` on `image_ids`, restricted to `categories`."""
    # Columns to Python lists once (tolist) rather than a float() per value: a third of the cost on 15k boxes.
    columns = (
        rows[:, 0].astype(np.int64).tolist(),
        rows[:, 6].astype(np.int64).tolist(),
        rows[:, 1:5].tolist(),
        (rows[:, 3] * rows[:, 4]).tolist(),
        rows[:, 5].tolist(),
    )
    anns = [
        {"id": i, "image_id": image_id, "category_id": cat, "bbox": box, "area": area, "score": score, "iscrowd": 0}
        for i, (image_id, cat, box, area, score) in enumerate(zip(*columns), 1)
    ]
    results = {"images": annotations["images"], "categories": annotations["categories"], "annotations": anns}
    if engine == "faster-coco-eval":
        from faster_coco_eval import COCO, COCOeval_faster

        quiet = lambda *args, **kwargs: None  # noqa: E731
        ev = COCOeval_faster(
            COCO(annotations, print_function=quiet), COCO(results, print_function=quiet), "bbox", print_function=quiet
        )
    else:
        from pycocotools.cocoeval import COCOeval

        ev = COCOeval(_coco_from_dict(annotations), _coco_from_dict(results), "bbox")
    ev.params.imgIds = [int(i) for i in image_ids]
    ev.params.catIds = list(categories)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}


def format_stats(metrics: dict) -> str:
    """The 12 stats as pycocotools prints them, one per line."""
    return "\n".join(f" {label:<48} = {metrics[name]:.4f}" for name, label in zip(STAT_NAMES, STAT_LABELS))


# Below this share of the categories with ground truth detected at all, the label map, the annotation file or
# the spec's categories probably do not fit the model (a person detector judged on 80 categories): warn.
MIN_CATEGORY_COVERAGE = 0.5


def category_coverage(annotations: dict, detected_categories, image_ids, categories) -> dict:
    """How many of the evaluated categories got any detection on `image_ids`: all of them, and those with ground
    truth there (a category without ground truth in the images cannot be missed). `warning` says why the
    coverage is suspicious, or is None."""
    ids = {int(i) for i in image_ids}
    evaluated = set(int(c) for c in categories)
    with_gt = {
        int(a["category_id"])
        for a in annotations["annotations"]
        if a["image_id"] in ids and int(a["category_id"]) in evaluated
    }
    detected = {int(c) for c in detected_categories} & evaluated
    found = len(detected & with_gt)
    warning = None
    if with_gt and found < MIN_CATEGORY_COVERAGE * len(with_gt):
        warning = (
            f"only {found} of the {len(with_gt)} categories with ground truth on these images got any "
            f"detection: check the spec's labels and evaluation.categories against the model and the "
            f"annotation file (the AP averages over all {len(evaluated)} evaluated categories)"
        )
    return {
        "evaluated": len(evaluated),
        "detected": len(detected),
        "with_ground_truth": len(with_gt),
        "detected_with_ground_truth": found,
        "warning": warning,
    }


def format_coverage(coverage: dict) -> str:
    """The category-coverage line of a run's output."""
    return (
        f" categories: {coverage['detected']} of {coverage['evaluated']} evaluated got any detection "
        f"({coverage['detected_with_ground_truth']} of the {coverage['with_ground_truth']} with ground truth "
        f"on these images)"
    )
