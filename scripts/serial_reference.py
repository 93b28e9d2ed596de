"""An independent, straightforward serial implementation of an end2end-detector accuracy run.

It shares no code with common/: it re-implements the documented preprocessing (BGR, keep-ratio resize into the
input, pad bottom/right with 114, mean/std, boxes divided by the scale) one image at a time, then runs
pycocotools directly. It is the yardstick for the suite's AP (truth) and wall time (speed).
"""
from __future__ import annotations

import contextlib
import io
import json
import time

import cv2
import numpy as np


def letterbox_input(img, size, mean, std, pad_value=114.0):
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    nw, nh = int(round(w * r)), int(round(h * r))
    canvas = np.full((size, size, 3), pad_value, dtype=np.float32)
    canvas[:nh, :nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    x = (canvas - np.array(mean, np.float32)) / np.array(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), nw / w, nh / h


# RTMDet-nano person, as documented in ../shared/data/PROVENANCE.md
SIZE, MEAN, STD = 320, (103.53, 116.28, 123.675), (57.375, 57.12, 58.395)


def serial_accuracy(onnx_path, images_dir, ann_file, size=SIZE, mean=MEAN, std=STD, category_id=1, max_images=None,
                    session_options=None):
    """Returns (metrics stats list, detections list, seconds)."""
    import onnxruntime as ort
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
    image_ids = sorted(gt.getImgIds())[:max_images]
    sess = ort.InferenceSession(str(onnx_path), session_options, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    results = []
    for image_id in image_ids:
        info = gt.loadImgs(image_id)[0]
        img = cv2.imread(f"{images_dir}/{info['file_name']}")
        x, sx, sy = letterbox_input(img, size, mean, std)
        dets, labels = sess.run(None, {in_name: x})
        for (x1, y1, x2, y2, score), label in zip(dets[0], labels[0]):
            if score <= 0:
                continue
            x1, x2 = min(max(x1 / sx, 0), info["width"]), min(max(x2 / sx, 0), info["width"])
            y1, y2 = min(max(y1 / sy, 0), info["height"]), min(max(y2 / sy, 0), info["height"])
            results.append({"image_id": image_id, "category_id": category_id,
                            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(score)})
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = image_ids
        ev.params.catIds = [category_id]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return list(ev.stats), results, time.perf_counter() - t0


def loop_floor(onnx_path, images_dir, ann_file, threads=2, size=SIZE, mean=MEAN, std=STD):
    """Seconds for this loop's per-image work alone (read, preprocess, run) split over `threads` threads, each
    running its share one image at a time on a shared 1-thread session: no start-up, no evaluation, no harness.
    It shows how much of a run's time is the model's and the decoder's on this machine, whatever the harness."""
    import threading

    import onnxruntime as ort

    with open(ann_file) as f:
        files = [f"{images_dir}/{im['file_name']}" for im in json.load(f)["images"]]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name

    def work(share):
        for path in share:
            x, _, _ = letterbox_input(cv2.imread(path), size, mean, std)
            sess.run(None, {in_name: x})

    workers = [threading.Thread(target=work, args=(files[i::threads],)) for i in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - t0


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--images-dir", required=True)
    ap.add_argument("--ann", required=True)
    ap.add_argument("--max-images", type=int)
    ap.add_argument("--floor-threads", type=int, help="time only the per-image work over this many threads")
    a = ap.parse_args()
    if a.floor_threads:
        print(json.dumps({"loop_seconds": loop_floor(a.onnx, a.images_dir, a.ann, a.floor_threads)}))
        raise SystemExit(0)
    stats, _, secs = serial_accuracy(a.onnx, a.images_dir, a.ann, max_images=a.max_images)
    print(json.dumps({"AP": stats[0], "AP50": stats[1], "seconds": secs}))
