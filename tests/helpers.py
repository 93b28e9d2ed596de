"""Small helpers shared by the tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "scripts" / "suite"


def copy_checkout(checkout: Path) -> Path:
    """A clone's working copy in `checkout`: the repository's files (tracked and untracked, not its ignored
    outputs, nor a user's own runs and baselines), the links of .importpath as links, .venv a link to the test's
    own environment. Commands run there write into the copy, never into the source tree."""
    import shutil
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if name.split("/", 1)[0] in ("regress", "shards", "results", "baselines") and name != "baselines/README.md":
            continue   # a user's own runs and baselines in the clone are not the repository
        src = REPO / name
        if src.is_symlink():   # .importpath/common -> ../common: the copy's code must be its own
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            (checkout / name).symlink_to(src.readlink())
        elif src.is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, checkout / name)
    (checkout / ".venv").symlink_to(Path(sys.executable).resolve().parent.parent
                                    if not (REPO / ".venv").exists() else (REPO / ".venv").resolve())
    return checkout


def run_script(script, *args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run a suite bash script (path relative to the repo) and capture its output."""
    # the scripts run under this interpreter, whichever one runs pytest (scripts/suite honours $PYTHON)
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(REPO / script), *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def detections_ap(detections: Path, annotation: Path, n: int | None = None, categories=(1,)) -> dict:
    """pycocotools on a COCO results file, on the first n images by id (all when None): a run's figures on a
    subset of the images it covered, to compare with a run of that subset."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation))
        ev = COCOeval(gt, gt.loadRes(str(detections)), "bbox")
        ev.params.imgIds = sorted(gt.getImgIds())[:n]
        ev.params.catIds = list(categories)
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1])}


def full_record(kind: str, **fields) -> dict:
    """A result record with every field its declared type requires (common/record/types.py), given figures
    merged over it: for tests that write records by hand and read them back through the suite's checks."""
    from common import SCHEMA_VERSION
    record = {"schema_version": SCHEMA_VERSION, "kind": kind, "time": "2026-01-01T00:00:00+00:00", "model": "m",
              "variant": "v", "backend": "onnxruntime", "device": "cpu", "precision": "fp32", "batch_size": 1,
              "onnx": {"path": "/m.onnx", "sha256": "abc"},
              "engine": {"path": "/m.onnx", "cache_hit": False, "runtime": "onnxruntime-1.31.1"},
              "targets": [], "checks": [], "verdict": "unchecked", "reasons": [], "environment": {}}
    if kind == "accuracy":
        record.update(dataset={"images_dir": "/d/images", "annotation": "/d/annotations/ann.json", "num_images": 1},
                      metrics={"AP": 0.5, "AP50": 0.7})
    else:
        record.update(metrics={"fps": 100.0, "latency_mean_ms": 10.0, "latency_p50_ms": 10.0,
                               "latency_p90_ms": 10.0, "latency_p99_ms": 10.0, "fps_compute": None, "fps_e2e": None},
                      timing={"cov": 0.01, "iterations": 100, "total_s": 5.0})
    record.update(fields)
    return record


def bootstrap_case(n_images: int = 40):
    """A generated run for the bootstrap tests: (annotations, detection rows, image ids, category ids, its
    MatchTable)."""
    from common.evaluate.bootstrap import MatchTable
    from synthetic_detections import synthetic_annotations, synthetic_detections

    ann = synthetic_annotations(n_images, seed=3)
    rows = synthetic_detections(ann, seed=4)
    ids = [im["id"] for im in ann["images"]]
    cats = [c["id"] for c in ann["categories"]]
    return ann, rows, ids, cats, MatchTable.from_rows(ann, rows, ids, cats)
