"""Generated accuracy runs for the report tests: records built by the calls an accuracy run makes after its last
batch (the incremental evaluator's stats, the bootstrap intervals from its matches, the per-category detail) and
detections written by the --save-detections writer, on generated detections of a given image set."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.evaluate.bootstrap import MatchTable, intervals
from common.evaluate.detail import accuracy_detail
from common.evaluate.detections_file import DetectionsFile
from common.evaluate.metrics import CocoEvaluator
from helpers import full_record

RUNTIME = "onnxruntime-1.31.1"


def case(precision: str = "fp32", model: str = "gen", variant: str = "v", kind: str = "accuracy") -> dict:
    c = {"model": model, "variant": variant, "backend": "onnxruntime", "precision": precision, "batch_size": 1,
         "kind": kind, "spec": f"{model}.yaml", "annotation": None, "max_images": None, "onnx": None}
    c["id"] = f"{model}/{variant}/onnxruntime/{precision}/bs1/{kind}"
    return c


RULES = {("gen.yaml", "v"): {"relative": {"AP": 0.2}, "accuracy_noise": 2.5, "reference": {},
                             "reference_fraction": 0.99, "evaluation_annotation": None}}


def accuracy_record(ann: dict, ann_file, images_dir, rows: np.ndarray, precision: str = "fp32",
                    resamples: int = 20) -> dict:
    """The accuracy record of a run whose detections are `rows` (image_id, x, y, w, h, score, category) on every
    image of `ann`. `resamples`: the bootstrap's (what a report shows of the intervals does not grow with it)."""
    ids = sorted(int(im["id"]) for im in ann["images"])
    cats = sorted(int(c["id"]) for c in ann["categories"])
    ev = CocoEvaluator(ann, cats)  # the model's labels are the category ids themselves
    ev.add_rows(rows)
    ev.complete(ids)
    metrics = ev.evaluate(ids)
    ci = intervals(MatchTable.from_evaluator(ev, ids), resamples)
    return full_record(
        "accuracy", model="gen", precision=precision,
        dataset={"images_dir": str(images_dir), "annotation": str(ann_file), "num_images": len(ids),
                 "categories": cats, "evaluator": ev.engine},
        metrics=metrics, metrics_ci=ci, accuracy_detail=accuracy_detail(ev.accumulated(), ev.categories, ann),
        num_detections=len(rows), engine={"path": "/m.onnx", "cache_hit": False, "runtime": RUNTIME})


def write_detections(path: Path, rows: np.ndarray) -> Path:
    """The detections file as --save-detections writes it, batch by batch."""
    out = DetectionsFile(path)
    for part in np.array_split(rows, max(1, len(rows) // 50_000)):
        out.add(part)
    out.commit()
    return path


def outcome(c: dict, record: dict, detections=None) -> dict:
    return {"case": c, "status": "ok", "records": [record], "error": None, "duration_s": 1.0,
            "detections_path": None if detections is None else str(detections)}
