"""Small helpers shared by the tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUITE = REPO / "scripts" / "suite"


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
