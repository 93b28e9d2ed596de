"""What a report shows beyond the 12 stats, from pycocotools' accumulated arrays: AP per category and per object
size, and the precision / recall curves at IoU 0.5 and 0.75 (area all, 100 detections)."""

from __future__ import annotations

import numpy as np

_AREAS = ("all", "small", "medium", "large")


def _mean(values: np.ndarray) -> float | None:
    ok = values[values > -1]
    return float(ok.mean()) if ok.size else None


def accuracy_detail(accumulated: dict | None, categories, annotations: dict, params=None) -> dict | None:
    """{'per_class': [{id, name, gt, AP, AP50, AP75, APs, APm, APl}], 'pr': {'0.50' | '0.75': {recall,
    precision}}} (precision: the mean over categories with ground truth at each recall threshold); None without
    the arrays (an evaluator other than the incremental one)."""
    if accumulated is None:
        return None
    from pycocotools.cocoeval import Params

    params = params or Params("bbox")
    prec = np.asarray(accumulated["precision"])  # [T, R, K, A, M]
    thr = np.asarray(params.iouThrs)
    t50, t75 = int(np.argmin(abs(thr - 0.5))), int(np.argmin(abs(thr - 0.75)))
    m = len(params.maxDets) - 1
    names = {c["id"]: c.get("name", str(c["id"])) for c in annotations.get("categories", ())}
    gt: dict[int, int] = {}
    for a in annotations.get("annotations", ()):
        if not a.get("iscrowd"):
            gt[a["category_id"]] = gt.get(a["category_id"], 0) + 1
    per_class = []
    for k, cat in enumerate(categories):
        p = prec[:, :, k, :, m]
        per_class.append(
            {
                "id": int(cat),
                "name": names.get(cat, str(cat)),
                "gt": gt.get(cat, 0),
                "AP": _mean(p[:, :, 0]),
                "AP50": _mean(p[t50, :, 0]),
                "AP75": _mean(p[t75, :, 0]),
                "APs": _mean(p[:, :, 1]),
                "APm": _mean(p[:, :, 2]),
                "APl": _mean(p[:, :, 3]),
            }
        )
    pr = {}
    for key, t in (("0.50", t50), ("0.75", t75)):
        p = prec[t, :, :, 0, m]  # [R, K]
        have = (p > -1).all(axis=0)
        pr[key] = {
            "recall": [float(r) for r in params.recThrs],
            "precision": [float(v) for v in (p[:, have].mean(axis=1) if have.any() else np.zeros(len(p)))],
        }
    return {"per_class": per_class, "pr": pr}
