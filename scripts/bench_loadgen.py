#!/usr/bin/env python3
"""The LoadGen harness's own overhead per query sample, against a 2627 images/s device at batch 32 (Offline).

A simulated device of --device-fps images/s (the replay backend: each batch of 32 waits 32 / F s on one device
clock, no host CPU) serves the recorded outputs of the real model over the real images; LoadGen's Offline
scenario issues every sample; the SUT batches, decodes and answers. Printed, side by side from this one run:

1. Offline samples/s against the device's rate: the harness's cost per sample that the device does not hide,
   (1 / QPS - 1 / F), as a fraction of the device's per-sample time 1 / F. Target: <= 5 %.
2. the SUT's own host time per sample outside the runner (taking queued samples, decoding the outputs, building
   and completing LoadGen's responses), as a fraction of 1 / F: the work the second SUT thread overlaps with the
   device.
3. what a device that needs its inputs adds (the replay device does not): gathering a batch of 32 samples from
   the input cache and normalising it, per sample, as a fraction of 1 / F.

    python scripts/bench_loadgen.py --onnx ../shared/data/models/rtmdet-nano-person/rtmdet_nano.onnx \\
        --images-dir ../shared/data/coco/val2017 \\
        --ann ../shared/data/coco/annotations/instances_val2017_person_subset350.json

Timings are only meaningful on an otherwise idle machine: the load average is printed with the results.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import ixuca_suite  # noqa: E402,F401  the one bootstrap: sys.path, the repo's .venv (scripts/ixuca_suite.py)
from common.harness.benchmarking import benchmark_parser, scratch_dir  # noqa: E402


def main() -> int:
    ap = benchmark_parser(__doc__)
    ap.add_argument("--device-fps", type=float, default=2627.0, help="the simulated device (default: 2627)")
    ap.add_argument("--bs", type=int, default=32, help="batch size (default: 32)")
    ap.add_argument("--seconds", type=float, default=5.0, help="LoadGen's minimum duration per run (default: 5)")
    a = ap.parse_args()
    import numpy as np

    from common.config.options import RunConfig
    from common.harness.runs import run_accuracy
    from common.harness.loadgen_run import _library, run_loadgen
    from common.loadgen.settings import LoadgenConfig
    from common.config.specs import load_model
    from common.data.coco import image_items, read_annotations
    from common.data.preprocess import Preprocessor

    per_sample_us = 1e6 / a.device_fps
    with scratch_dir("bench-loadgen-", a.keep) as work:
        base = dict(model=a.model, onnx=a.onnx, images_dir=a.images_dir, annotation=a.ann, progress=False,
                    preflight=0, cache_dir=str(work / "engines"), results_dir=str(work / "res"),
                    input_cache=str(work / "inputs"))
        run_accuracy(RunConfig(**base, record_outputs=str(work / "rec"), batch_size=a.bs))   # fills the cache too
        cfg = RunConfig(**base, backend="replay", batch_size=a.bs,
                        backend_options={"replay_dir": str(work / "rec"), "replay_fps": a.device_fps})
        lg_cfg = LoadgenConfig("Offline", short=True, settings={"target_qps": a.device_fps,
                                                                "min_duration_s": a.seconds})
        runs = [run_loadgen(cfg, lg_cfg)["loadgen"] for _ in range(a.repeats)]
        qps = statistics.median(r["qps"] for r in runs)
        hidden_us = 1e6 / qps - per_sample_us
        sut_us = statistics.median(r["sut"]["harness_us_per_sample"] for r in runs)

        variant = load_model(a.model).variant()
        items = image_items(read_annotations(Path(a.ann)), Path(a.images_dir))
        library = _library(items, Preprocessor(variant.preprocess, variant.height, variant.width), cfg.batch_size, 0,
                           cfg.progress, cfg.input_cache)
        rng = np.random.default_rng(0)
        batches = [rng.integers(0, len(library), a.bs) for _ in range(200)]
        library.batch(batches[0])
        t0 = time.perf_counter()
        for idx in batches:
            library.batch(idx)
        gather_us = (time.perf_counter() - t0) / (len(batches) * a.bs) * 1e6

    print(f"LoadGen Offline, batch {a.bs}, simulated device {a.device_fps:g} images/s ({per_sample_us:.1f} us per "
          f"sample), {runs[0]['queries']} query of {runs[0]['sut']['samples']} samples, median of {a.repeats} runs; "
          f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    print(f"1. Offline {qps:.1f} samples/s = {qps / a.device_fps:.4f} of the device: {hidden_us:.2f} us per sample "
          f"not hidden behind the device = {hidden_us / per_sample_us * 100:.2f} % of its per-sample time "
          f"(target <= 5 %); runs: {', '.join(format(r['qps'], '.1f') for r in runs)}")
    print(f"2. SUT host time per sample outside the runner: {sut_us:.2f} us = {sut_us / per_sample_us * 100:.2f} % "
          f"(overlapped with the device by the second SUT thread)")
    print(f"3. gathering + normalising a batch from the input cache (a device that needs inputs): {gather_us:.2f} us "
          f"per sample = {gather_us / per_sample_us * 100:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
