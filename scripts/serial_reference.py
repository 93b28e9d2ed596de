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


def loop_floor(onnx_path, images_dir, ann_file, threads=2, size=SIZE, mean=MEAN, std=STD, evaluate=False):
    """Seconds for this loop's per-image work alone (read, preprocess, run) split over `threads` threads, each
    running its share one image at a time on a shared 1-thread session: no start-up, no evaluation, no harness.
    It shows how much of a run's time is the model's and the decoder's on this machine, whatever the harness.
    With `evaluate`, each image's detections are also mapped back and kept, and faster-coco-eval computes the 12
    stats after the loop (in the time returned): the same per-image work as an accuracy run, with no harness."""
    import threading

    import onnxruntime as ort

    with open(ann_file) as f:
        dataset = json.load(f)
    images = dataset["images"]
    files = [f"{images_dir}/{im['file_name']}" for im in images]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name

    found = [[] for _ in range(threads)]

    def work(k):
        for i in range(k, len(files), threads):
            x, sx, sy = letterbox_input(cv2.imread(files[i]), size, mean, std)
            dets, _ = sess.run(None, {in_name: x})
            if evaluate:
                keep = dets[0][dets[0][:, 4] > 0].astype(np.float64)
                w, h = images[i]["width"], images[i]["height"]
                x1, x2 = np.clip(keep[:, 0] / sx, 0, w), np.clip(keep[:, 2] / sx, 0, w)
                y1, y2 = np.clip(keep[:, 1] / sy, 0, h), np.clip(keep[:, 3] / sy, 0, h)
                found[k].append(np.column_stack([np.full(len(keep), images[i]["id"]), x1, y1, x2 - x1, y2 - y1,
                                                 keep[:, 4]]))

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if evaluate:
        from faster_coco_eval import COCO, COCOeval_faster
        rows = np.concatenate([r for part in found for r in part])
        anns = [{"id": n, "image_id": int(r[0]), "category_id": 1, "bbox": r[1:5].tolist(),
                 "area": float(r[3] * r[4]), "score": float(r[5]), "iscrowd": 0} for n, r in enumerate(rows, 1)]
        quiet = lambda *args, **kwargs: None  # noqa: E731
        dt = {"images": images, "categories": dataset["categories"], "annotations": anns}
        ev = COCOeval_faster(COCO(dataset, print_function=quiet), COCO(dt, print_function=quiet), "bbox",
                             print_function=quiet)
        ev.params.catIds = [1]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return time.perf_counter() - t0


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--images-dir", required=True)
    ap.add_argument("--ann", required=True)
    ap.add_argument("--max-images", type=int)
    ap.add_argument("--floor-threads", type=int, help="time only the per-image work over this many threads")
    ap.add_argument("--evaluate", action="store_true", help="with --floor-threads: also evaluate the detections "
                                                            "(faster-coco-eval), a whole accuracy run with no harness")
    a = ap.parse_args()
    if a.floor_threads:
        print(json.dumps({"loop_seconds": loop_floor(a.onnx, a.images_dir, a.ann, a.floor_threads,
                                                     evaluate=a.evaluate)}))
        raise SystemExit(0)
    stats, _, secs = serial_accuracy(a.onnx, a.images_dir, a.ann, max_images=a.max_images)
    print(json.dumps({"AP": stats[0], "AP50": stats[1], "seconds": secs}))
