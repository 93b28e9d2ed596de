"""Side-by-side benchmark: the suite's full accuracy run vs a straightforward serial loop, same model and images.

Both run as fresh processes (imports, model load, every image, COCO evaluation included), alternating, and the
script prints each wall time, the ratio suite / serial, and both APs with their difference (the serial loop is an
independent implementation of the documented preprocessing, so the AP difference is also a truth check). It also
times the serial loop's bare per-image work (read, preprocess, run) split over one thread per core with no start-up
and no evaluation: what part of the ratio is the model's and the machine's, whatever the harness does.

    python scripts/bench_accuracy_run.py --onnx ../shared/data/models/rtmdet-nano-person/rtmdet_nano.onnx \
        --images-dir ../shared/data/coco/val2017 --ann ../shared/data/coco/annotations/instances_val2017_person_subset350.json
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
import ixuca_suite  # noqa: E402,F401  the one bootstrap: sys.path, the repo's .venv (scripts/ixuca_suite.py)
from common.harness.benchmarking import benchmark_parser, scratch_dir  # noqa: E402


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode not in (0, 1):
        sys.exit(f"command failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return wall, out.stdout


def main():
    ap = benchmark_parser(__doc__)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--bs", type=int, default=1)
    ap.add_argument("--suite-args", default="", help="extra flags for the suite run, e.g. '--streams 1'")
    ap.add_argument("--floor-threads", type=int, default=os.cpu_count() or 1,
                    help="also time the bare per-image work over this many threads (0 = skip; default: the cores)")
    a = ap.parse_args()
    with scratch_dir("bench-acc-", a.keep) as work:
        run(a, str(work))


def run(a, results_dir: str):
    serial_cmd = [sys.executable, str(ROOT / "scripts" / "serial_reference.py"), "--onnx", a.onnx,
                  "--images-dir", a.images_dir, "--ann", a.ann]
    suite_cmd = [str(ROOT / "scripts" / "suite"), "accuracy", "--model", a.model, "--precision", a.precision,
                 "--bs", str(a.bs), "--onnx", a.onnx, "--images-dir", a.images_dir, "--ann", a.ann,
                 "--results-dir", results_dir, "--no-progress", *a.suite_args.split()]
    if a.precision != "fp32":
        timed(suite_cmd)  # build the engine once: the cache makes later runs reuse it, as CI nodes do
    floor_cmd = serial_cmd + ["--floor-threads", str(a.floor_threads)]
    serial_t, suite_t, floor_t = [], [], []
    for i in range(a.repeats):
        if a.floor_threads:
            floor_t.append(json.loads(timed(floor_cmd)[1].strip().splitlines()[-1])["loop_seconds"])
        for name, cmd, bucket in (("serial", serial_cmd, serial_t), ("suite", suite_cmd, suite_t))[:: 1 if i % 2 == 0 else -1]:
            wall, out = timed(cmd)
            bucket.append(wall)
            if name == "serial":
                serial_ap = json.loads(out.strip().splitlines()[-1])
    records = sorted(Path(results_dir).glob("*.json"))
    suite_m = json.loads(records[-1].read_text())["metrics"]
    s, q = statistics.median(serial_t), statistics.median(suite_t)
    print(f"images: {a.ann} | model: {a.onnx} | precision {a.precision} | batch {a.bs} | repeats {a.repeats}")
    print(f"serial loop wall s : {' '.join(f'{t:.2f}' for t in serial_t)}  (median {s:.2f})")
    print(f"suite run wall s   : {' '.join(f'{t:.2f}' for t in suite_t)}  (median {q:.2f})")
    print(f"ratio suite/serial : {q / s:.3f}")
    if floor_t:
        f = statistics.median(floor_t)
        print(f"bare per-image work over {a.floor_threads} threads, loop only (no start-up, no evaluation) s: "
              f"{' '.join(f'{t:.2f}' for t in floor_t)}  (median {f:.2f}, {f / s:.3f} of serial; "
              f"the suite's start-up + evaluation + harness cost {q - f:.2f} s above it)")
    print(f"AP    suite {suite_m['AP']:.4f}  serial {serial_ap['AP']:.4f}  diff {suite_m['AP'] - serial_ap['AP']:+.4f}")
    print(f"AP50  suite {suite_m['AP50']:.4f}  serial {serial_ap['AP50']:.4f}  diff {suite_m['AP50'] - serial_ap['AP50']:+.4f}")


if __name__ == "__main__":
    main()
