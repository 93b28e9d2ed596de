"""How fast is the harness itself? Prints, measured in this one run on this machine:

1. harness throughput: accuracy runs on the replay backend (recorded raw outputs, so no inference), evaluation
   included, without and with the preprocessed-input cache (run wall = spec load -> metrics, in-process);
2. faster-coco-eval vs pycocotools on the same detections: time ratio and the largest stat difference;
3. peak RSS of accuracy runs (own process, workers=0) at 100 vs all images;
4. the performance run's FPS vs a plain ONNX Runtime loop on the same graph, alternated.

    python scripts/bench_harness.py --onnx ../shared/data/models/rtmdet-nano-person/rtmdet_nano.onnx \
        --images-dir ../shared/data/coco/val2017 --ann ../shared/data/coco/annotations/instances_val2017_person_subset350.json
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
import ixuca_suite  # noqa: E402,F401  the one bootstrap: sys.path, the repo's .venv (scripts/ixuca_suite.py)
from common.harness.benchmarking import benchmark_parser, scratch_dir  # noqa: E402

from common.data.coco import read_annotations  # noqa: E402
from common.evaluate.metrics import STAT_NAMES, coco_metrics  # noqa: E402
from common.harness.requests import dataset_request  # noqa: E402
from common.harness.runs import RunConfig, timing_inputs, run_accuracy, run_performance  # noqa: E402

RSS_SNIPPET = """
import json, resource, runpy
runpy.run_path({root!r} + "/scripts/ixuca_suite.py")
from common.harness.runs import RunConfig, run_accuracy
run_accuracy(RunConfig(**json.loads({cfg!r})))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main():
    ap = benchmark_parser(__doc__)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--bs", type=int, default=32,
                    help="batch size of the replay runs (32: the batch of the public MR-V100 RTMDet figure)")
    a = ap.parse_args()
    with scratch_dir("bench-harness-", a.keep) as work:
        run(a, work)


def run(a, work: Path):
    base = dict(model=a.model, onnx=a.onnx, images_dir=a.images_dir, annotation=a.ann, progress=False,
                cache_dir=str(work / "engines"))
    rec = run_accuracy(RunConfig(**base, record_outputs=str(work / "rec"), detections_out=str(work / "dets.json")))
    n = rec["dataset"]["num_images"]
    replay = dict(base, backend="replay", backend_options={"replay_dir": str(work / "rec")})
    print(f"images: {n} ({a.ann}); machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")

    def best_run(**kw):
        runs = [run_accuracy(RunConfig(**replay, batch_size=a.bs, **kw))["run"] for _ in range(a.repeats)]
        return min(runs, key=lambda r: r["wall_s"])

    def line(label, r):
        loop = r["wall_s"] - r["evaluate_s"]
        return (f"   {label:<16} {n / r['wall_s']:8.1f} images/s (wall {r['wall_s']:.3f} s = COCO evaluation "
                f"{r['evaluate_s']:.3f} s + the rest {loop:.3f} s, i.e. {n / loop:.1f} images/s without evaluation)")

    cold = best_run(workers=a.workers, streams=1)
    run_accuracy(RunConfig(**replay, input_cache=str(work / "inputs"), workers=a.workers))  # fills the cache
    warm = best_run(workers=0, streams=1, input_cache=str(work / "inputs"))
    print(f"1. harness throughput, replay backend, batch {a.bs}, evaluation included (best of {a.repeats}):")
    print(line(f"no input cache, {a.workers} decode workers", cold))
    print(line("input cache", warm))

    ann = read_annotations(a.ann)
    dets = json.loads((work / "dets.json").read_text())
    rows = [[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in dets]
    import numpy as np
    rows = np.array(rows, np.float64)
    ids = [im["id"] for im in ann["images"]]
    cats = rec["dataset"]["categories"]
    times, stats = {}, {}
    for engine in ("pycocotools", "faster-coco-eval"):
        best = float("inf")
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            stats[engine] = coco_metrics(ann, rows, ids, cats, engine)
            best = min(best, time.perf_counter() - t0)
        times[engine] = best
    diff = max(abs(stats["pycocotools"][k] - stats["faster-coco-eval"][k]) for k in STAT_NAMES)
    print(f"2. COCO eval of {len(rows)} detections: pycocotools {times['pycocotools']:.3f} s, faster-coco-eval "
          f"{times['faster-coco-eval']:.3f} s, speed-up {times['pycocotools'] / times['faster-coco-eval']:.2f}x, "
          f"max stat difference {diff:.2e}")

    rss = {}
    for count in (100, n):
        cfg = json.dumps(dict(base, max_images=count, workers=0, streams=1))
        out = subprocess.run([sys.executable, "-c", RSS_SNIPPET.format(root=str(ROOT), cfg=cfg)],
                             capture_output=True, text=True, check=True)
        rss[count] = int(out.stdout.strip().splitlines()[-1]) / 1024
    print(f"3. peak RSS of an accuracy run: {rss[100]:.1f} MiB at 100 images, {rss[n]:.1f} MiB at {n} images "
          f"({(rss[n] / rss[100] - 1) * 100:+.1f}%)")

    import onnxruntime as ort
    suite_fps, plain_fps = [], []
    sess = ort.InferenceSession(a.onnx, providers=["CPUExecutionProvider"])
    from common.config.specs import load_model
    # the same preprocessed image the performance run times: in-graph NMS cost depends on the content
    timed = RunConfig(**base)
    x, _ = timing_inputs(dataset_request(timed), load_model(a.model).variant(), timed.batch_size)
    name = sess.get_inputs()[0].name
    for _ in range(a.repeats):
        perf = run_performance(RunConfig(**base, warmup_s=1.0, min_duration_s=5.0, min_iters=100))
        suite_fps.append(perf["timing"]["fps"])
        for _ in range(20):
            sess.run(None, {name: x})
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < 5.0:
            sess.run(None, {name: x})
            k += 1
        plain_fps.append(k / (time.perf_counter() - t0))
    s, p = max(suite_fps), max(plain_fps)
    print(f"4. FPS at batch 1, fp32: performance run {s:.2f} (runs: {', '.join(f'{v:.1f}' for v in suite_fps)}); "
          f"plain ONNX Runtime loop {p:.2f} (runs: {', '.join(f'{v:.1f}' for v in plain_fps)}); ratio {s / p:.3f}")


if __name__ == "__main__":
    main()
