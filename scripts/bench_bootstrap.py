#!/usr/bin/env python3
"""Cost of the bootstrap intervals (common/evaluate/bootstrap.py): 1000 resamples of a run's 12 stats, and the
paired interval of two runs, on

  1. a real run: --ann FILE --detections FILE (COCO results JSON, e.g. `scripts/suite accuracy ... --save-detections`)
     on the images of the annotation file; without them, a generated 350-image one-class set of the same size;
  2. 5000 images x 300 detections x 80 classes, generated (datasets/synthetic_detections.py), or --big-ann /
     --big-detections for a real one.

The one-off matching (pycocotools' per-image matching, which a run has already done) is printed apart.

    scripts/bench_bootstrap.py [--ann A --detections D] [--resamples 1000] [--skip-big]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import ixuca_suite  # noqa: E402  the one bootstrap: sys.path, the repo's .venv (scripts/ixuca_suite.py)

import numpy as np  # noqa: E402

from common.evaluate.bootstrap import MatchTable, intervals, paired_interval  # noqa: E402


def _rows(dets: list[dict]) -> np.ndarray:
    return np.array([[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in dets],
                    np.float64).reshape(-1, 7)


def _load(ann_path, det_path):
    ann = json.loads(Path(ann_path).read_text())
    return ann, _rows(json.loads(Path(det_path).read_text()))


def _generated(n_images, categories, per_image, max_objects, seed=0):
    synthetic = ixuca_suite.datasets_module("synthetic_detections")
    synthetic_annotations, synthetic_detections = synthetic.synthetic_annotations, synthetic.synthetic_detections
    ann = synthetic_annotations(n_images, categories, seed=seed, max_objects=max_objects)
    return ann, synthetic_detections(ann, seed=seed + 1, per_image=per_image)


def _load() -> str:
    """The 1-minute load average: on a shared machine wall time is the CPU's share, not the code's cost."""
    import os
    return f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def bench(name: str, ann: dict, rows: np.ndarray, resamples: int) -> None:
    ids = sorted(im["id"] for im in ann["images"])
    cats = sorted(c["id"] for c in ann["categories"])
    print(f"== {name}: {len(ids)} images, {len(cats)} categories, {len(rows)} detections, "
          f"{len(ann['annotations'])} ground-truth boxes")
    t = time.perf_counter()
    table = MatchTable.from_rows(ann, rows, ids, cats)
    print(f"matching once (not part of the bootstrap; a run has done it): {time.perf_counter() - t:.2f} s")
    t, c = time.perf_counter(), time.process_time()
    ci = intervals(table, resamples)
    single, cpu = time.perf_counter() - t, time.process_time() - c
    print(f"{resamples} resamples, 12 stats of one run: {single:.2f} s wall, {cpu:.2f} s CPU (load {_load()})   "
          f"AP {table.point['AP']:.4f} [{ci['stats']['AP'][0]:.4f}, {ci['stats']['AP'][1]:.4f}]  "
          f"AP50 {table.point['AP50']:.4f} [{ci['stats']['AP50'][0]:.4f}, {ci['stats']['AP50'][1]:.4f}]")
    # a second run of the same images: the scores perturbed a little (an FP16-like engine)
    rng = np.random.default_rng(7)
    other_rows = rows.copy()
    other_rows[:, 5] = np.clip(other_rows[:, 5] * (1 + 1e-3 * rng.standard_normal(len(rows))), 0, 1)
    other = MatchTable.from_rows(ann, other_rows, ids, cats)
    t, c = time.perf_counter(), time.process_time()
    p = paired_interval(other, table, resamples)
    paired, cpu = time.perf_counter() - t, time.process_time() - c
    print(f"{resamples} resamples, paired (both runs, 12 stats each): {paired:.2f} s wall, {cpu:.2f} s CPU "
          f"(load {_load()})   "
          f"AP diff [{p['diff']['AP'][0] * 100:+.3f}, {p['diff']['AP'][1] * 100:+.3f}] points")


def main(argv=None) -> int:
    from common.config.parser import SuiteParser  # no prefix matching, did-you-mean, --version
    ap = SuiteParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ann"), ap.add_argument("--detections")
    ap.add_argument("--big-ann"), ap.add_argument("--big-detections")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--skip-big", action="store_true")
    args = ap.parse_args(argv)
    if args.ann and args.detections:
        bench(f"run {Path(args.detections).name}", *_load(args.ann, args.detections), args.resamples)
    else:
        bench("generated 350-image one-class run", *_generated(350, (1,), 45, 8), args.resamples)
    if not args.skip_big:
        if args.big_ann and args.big_detections:
            data = _load(args.big_ann, args.big_detections)
        else:
            data = _generated(5000, tuple(range(1, 81)), 300, 14)
        bench("5000 images x 300 detections x 80 classes", *data, args.resamples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
