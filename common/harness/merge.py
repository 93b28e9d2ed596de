"""`scripts/suite merge DIR...`: the shards of one accuracy run joined into one accuracy record, evaluated once
over every image (docs/scale-out.md; the shards themselves: common/harness/shards.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from common.config.specs import load_model
from common.data.coco import read_annotations
from common.decode.outputs import fault_reasons
from common.engine_cache import atomic_write_bytes, file_sha256
from common.errors import ConfigError, InputError, RuntimeFailure
from common.evaluate.bootstrap import MatchTable, intervals
from common.evaluate.detail import accuracy_detail
from common.evaluate.metrics import CocoEvaluator, to_coco_results
from common.harness.runs import finish_record
from common.harness.shards import check_shards, find_shards, ids_digest, shard_bounds
from common.record.results import new_record


def merge_shards(
    dirs: list, annotation: str | None = None, evaluator: str | None = None, detections_out: str | None = None
) -> dict:
    """The merged accuracy record of the shards under `dirs` (in any order): the union of their detections
    evaluated once over every image, targets judged on it. `annotation`: the annotation file, where the one the
    shards read is elsewhere on this machine (checked by sha256)."""

    t0 = time.perf_counter()
    shards, empty = find_shards(dirs)
    shards = check_shards(shards, empty)
    first = shards[0].record
    ident = first["identity"]
    ann_file = Path(annotation or first["dataset"]["annotation"])
    if not ann_file.is_file():
        raise InputError("annotation file not found (pass --ann with its path on this machine)", ann_file)
    if file_sha256(ann_file) != ident["annotation_sha256"]:
        raise ConfigError("is not the annotation file the shards were run with (sha256 differs)", ann_file)
    annotations = read_annotations(ann_file, polygons=False)
    ids = sorted(int(im["id"]) for im in annotations["images"])
    if first["shard"].get("max_images"):
        ids = ids[: first["shard"]["max_images"]]
    if len(ids) != first["shard"]["all_images"]:
        raise ConfigError(
            f"the shards cover {first['shard']['all_images']} images, the annotation file has {len(ids)}", ann_file
        )
    for s in shards:  # the union is exactly the image set, each image in one shard
        a, b = shard_bounds(len(ids), s.index, s.total)
        if ids_digest(ids[a:b]) != s.record["shard"]["ids_sha256"]:
            raise ConfigError(
                f"shard {s.index}/{s.total} ran other images than this annotation file's shard {s.index}/{s.total}",
                s.path,
            )
    rows = np.concatenate([s.rows() for s in shards]) if shards else np.empty((0, 7))
    ev = CocoEvaluator(annotations, ident["categories"], ident["categories"], evaluator, source=ann_file)
    t_eval = time.perf_counter()
    ev.add_rows(rows)
    ev.complete(ids)
    metrics = ev.evaluate(ids)
    evaluate_s = time.perf_counter() - t_eval
    # what the unsharded run's record carries beyond the stats: their bootstrap intervals (the same matches and
    # draws, so the same intervals) and the per-category detail the reports draw
    metrics_ci = intervals(MatchTable.from_evaluator(ev, ids)) if ids and ev.incremental is not None else None
    detail = accuracy_detail(ev.accumulated(), ev.categories, annotations)
    nonfinite: dict = {}
    for s in shards:
        for k, v in (s.record.get("nonfinite") or {}).items():
            nonfinite[k] = nonfinite.get(k, 0) + v
    walls = [s.record["run"]["wall_s"] for s in shards]
    fields = {
        k: first[k] for k in ("model", "variant", "backend", "device", "precision", "batch_size", "onnx", "engine")
    }
    devices = sorted(
        {str(s.record["shard"].get("gpu_index")) for s in shards if s.record["shard"].get("gpu_index") is not None}
    )
    record = new_record(
        "accuracy",
        **fields,
        dataset={
            "images_dir": first["dataset"]["images_dir"],
            "annotation": str(ann_file),
            "num_images": len(ids),
            "categories": ev.categories,
            "evaluator": ev.engine,
            "input_cache_hit": None,
        },
        metrics=metrics,
        metrics_ci=metrics_ci,
        accuracy_detail=detail,
        num_detections=len(rows),
        detections_file=detections_out,
        merged_from=[
            {
                "index": s.index,
                "total": s.total,
                "record": str(s.path),
                "images": s.record["dataset"]["num_images"],
                "wall_s": s.record["run"]["wall_s"],
                "device": s.record["device"],
                "gpu_index": s.record["shard"].get("gpu_index"),
                "source": s.record["shard"]["source"],
                "resumed_images": s.record["run"].get("resumed_images"),
            }
            for s in shards
        ],
        run={
            "wall_s": time.perf_counter() - t0,
            "evaluate_s": evaluate_s,
            "shards": len(shards),
            "slowest_shard_s": max(walls),
            "shard_wall_s_total": sum(walls),
            "images_per_s": len(ids) / max(max(walls), 1e-9),
            "gpu_indices": devices or None,
        },
    )
    spec = load_model(first.get("model_arg") or first["model"]).variant(first["variant"])
    targets = spec.targets_for(first["backend"], first["device"], first["precision"], first["batch_size"])
    record = finish_record(record, metrics, targets, fault_reasons(nonfinite))
    if detections_out:
        try:
            atomic_write_bytes(detections_out, json.dumps(to_coco_results(rows)).encode())
        except OSError as exc:
            raise RuntimeFailure(f"cannot write the detections ({exc.strerror})", detections_out) from None
    return record
