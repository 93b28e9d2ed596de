#!/usr/bin/env python3
"""INT8 recipes side by side on RTMDet-nano person (docs/int8.md): Convs in INT8, AP on held-out images, speed.

    scripts/bench_int8.py [--shared-data DIR] [--calib-images 200] [--eval-images 150] [--threads 2]
        [--rounds 5] [--seconds 1.0] [--cache-dir DIR] [--no-openvino] [--json out.json]

Calibration on set-B images (person_keypoints_val2017_single_person_subset200.json, copied to a temporary folder);
AP (person) on set A (instances_val2017_subset150.json), whose file names are checked to be disjoint from the
calibration images. Every engine runs through the suite's backends (Runner interface); throughput is images per
second of runner.infer, all engines alternated round by round in this one process with the same thread count,
and reported as a ratio to ONNX Runtime FP32 at the same batch size (bs1, bs8). Prints the table and, per INT8
recipe, the Convs kept in FP32 and why.

Exit codes: 0 done, 2 bad input (data missing, calibration and evaluation images overlap), 3 runtime failure.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import ixuca_suite  # noqa: E402,F401  the one bootstrap: sys.path, the repo's .venv (scripts/ixuca_suite.py)
from common.cli import guarded  # noqa: E402
from common.errors import ConfigError, InputError  # noqa: E402

SET_B = "person_keypoints_val2017_single_person_subset200.json"
SET_A = "instances_val2017_subset150.json"
ONNX = "models/rtmdet-nano-person/rtmdet_nano.onnx"
BATCHES = (1, 8)


def build_parser():
    from common.config.parser import SuiteParser  # no prefix matching, did-you-mean, --version
    p = SuiteParser(prog="bench_int8", description=__doc__.split("\n\n")[0])
    p.add_argument("--shared-data", default=os.environ.get("SUITE_SHARED_DATA", "shared/data"))
    p.add_argument("--calib-images", type=int, default=200)
    p.add_argument("--eval-images", type=int, default=150)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="timing rounds, every engine once per round")
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per engine per round")
    p.add_argument("--cache-dir", default=os.environ.get("ENGINE_CACHE_DIR", ".cache/engines"))
    p.add_argument("--no-openvino", action="store_true", help="ONNX Runtime rows only")
    p.add_argument("--json", help="write the figures as JSON here")
    p.add_argument("--debug", action="store_true")
    return p


def _calibration(shared: Path, folder: Path, n: int, variant):
    from common.config.options import RunConfig
    from common.data.calibration import CalibrationSet
    b = json.loads((shared / "coco" / "annotations" / SET_B).read_text())
    a = json.loads((shared / "coco" / "annotations" / SET_A).read_text())
    names = sorted(im["file_name"] for im in b["images"])[:n]
    overlap = set(names) & {im["file_name"] for im in a["images"]}
    if overlap:
        raise ConfigError(f"{len(overlap)} calibration image(s) are evaluation images (e.g. {sorted(overlap)[0]})",
                          shared / "coco" / "annotations" / SET_A)
    for name in names:
        shutil.copy(shared / "coco" / "val2017" / name, folder / name)
    cfg = RunConfig(model="rtmdet", dataset_dir=str(shared / "coco"), annotation=SET_A, calib_images=n)
    # CalibrationSet refuses any image whose file name is in the evaluation annotation file (set A) again
    return CalibrationSet.for_variant(str(folder), variant, cfg)


def _ap(runner, variant, images, batch: int) -> float:
    from common.decode.outputs import get_decoder
    from common.evaluate.metrics import CocoEvaluator
    decoder = get_decoder(variant.decode_cfg)
    ev = CocoEvaluator(images.annotations, variant.label_map, variant.categories)
    for s in range(0, len(images.image_ids), batch):
        out = runner.infer(images.inputs[s:s + batch])
        bi, boxes, scores, labels = decoder(out, images.meta[s:s + batch], variant.decode_cfg)
        ev.add(images.image_ids[s:s + batch][bi], boxes, scores, labels)
    return float(ev.evaluate(images.image_ids)["AP"])


def _alternated_throughput(runners: dict, x, rounds: int, seconds: float) -> dict:
    """{name: images per second} of runner.infer on the batch x, every runner timed once per round in turn."""
    import numpy as np
    for r in runners.values():
        r.infer(x)
    rates = {k: [] for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            n, t0 = 0, time.perf_counter()
            while True:
                r.infer(x)
                n += 1
                dt = time.perf_counter() - t0
                if dt >= seconds and n >= 3:
                    break
            rates[k].append(n * len(x) / dt)
    return {k: float(np.median(v)) for k, v in rates.items()}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        import onnx

        from common.config.specs import load_model
        from common.engine_cache import EngineCache, file_sha256
        from common.harness.fidelity import load_images
        from common.runtime.backends import get_backend
        from common.runtime.backends.base import BuildRequest
        from common.runtime.quantize import int8_convs, settings_for
        shared = Path(args.shared_data)
        onnx_path = shared / ONNX
        if not onnx_path.is_file():
            raise InputError("the shared RTMDet-nano ONNX is missing (--shared-data)", onnx_path)
        variant = load_model("rtmdet").variant()
        cache = EngineCache(Path(args.cache_dir))
        images = load_images(variant, str(shared / "coco"), SET_A, None, args.eval_images)
        rows, kept = {}, {}
        with tempfile.TemporaryDirectory(prefix="bench_int8.") as tmp:
            calib = _calibration(shared, Path(tmp), args.calib_images, variant)
            settings = replace(settings_for(variant, args.calib_images), keep_fp32=())
            sha = file_sha256(onnx_path)

            def request(precision, batch):
                return BuildRequest(onnx_path, sha, precision, batch, variant.input_name, (3, variant.height,
                                    variant.width), cache, {"calibration": calib, "int8": settings})
            recipes = [("ORT FP32", "onnxruntime", "fp32"), ("ORT INT8 (rule, per-tensor activations)",
                                                              "onnxruntime", "int8")]
            if not args.no_openvino:
                recipes += [("OpenVINO FP32", "openvino", "fp32"), ("OpenVINO INT8 (NNCF, rule's ignored scope)",
                                                                    "openvino", "int8")]
            runners = {bs: {} for bs in BATCHES}
            for name, backend_name, precision in recipes:
                backend = get_backend(backend_name, threads=args.threads)
                t0 = time.perf_counter()
                for bs in BATCHES:
                    req = request(precision, bs)
                    engine, _ = backend.build(req)
                    runners[bs][name] = backend.load(engine, req)
                row = {"backend": backend_name, "precision": precision, "build_s": round(time.perf_counter() - t0, 1)}
                if backend_name == "onnxruntime":
                    row["int8_convs"] = int8_convs(onnx.load(str(engine))) if precision == "int8" else 0
                    if precision == "int8":
                        from common.runtime.quantize import quantize_onnx
                        info = quantize_onnx(onnx_path, Path(tmp) / "q.onnx", calib, settings, variant.input_name,
                                             cache.root)
                        kept[name] = info["kept_by_rule"]
                else:
                    from common.runtime.backends.openvino_backend import ignored_scope
                    from common.runtime.backends.openvino_backend import int8_convs as ov_int8
                    row["int8_convs"] = ov_int8(runners[1][name])[0]
                    if precision == "int8":
                        kept[name] = ignored_scope(onnx_path, request("int8", 1), settings)[1]
                row["AP"] = _ap(runners[1][name], variant, images, 1)
                rows[name] = row
                print(f"  {name}: built/loaded in {row['build_s']} s, AP {row['AP']:.4f}", flush=True)
            for bs in BATCHES:
                x = images.inputs[:bs]
                rate = _alternated_throughput(runners[bs], x, args.rounds, args.seconds)
                for name in rate:
                    rows[name][f"fps_bs{bs}"] = rate[name]
                    rows[name][f"speed_bs{bs}"] = rate[name] / rate["ORT FP32"]
        fp32 = rows["ORT FP32"]["AP"]
        load = os.getloadavg()
        print(f"\nRTMDet-nano person, calibration {len(calib.images)} set-B images, AP on {len(images.image_ids)} "
              f"set-A images (disjoint by file name), {args.threads} threads, engines alternated "
              f"{args.rounds} rounds x {args.seconds:g} s in one process; load average {load[0]:.1f}\n")
        print("| recipe | Conv INT8 / 123 | AP (ORT FP32 {:.4f}) | AP - FP32 | speed vs ORT FP32, bs1 / bs8 |"
              .format(fp32))
        print("| --- | --- | --- | --- | --- |")
        for name, r in rows.items():
            print(f"| {name} | {r['int8_convs']} | {r['AP']:.4f} | {r['AP'] - fp32:+.4f} | "
                  f"{r['speed_bs1']:.2f} / {r['speed_bs8']:.2f} |")
        print()
        for name, r in rows.items():
            print(f"  {name}: {r['fps_bs1']:.1f} img/s at bs1, {r['fps_bs8']:.1f} img/s at bs8")
        for name, items in kept.items():
            print(f"\n{name}: {len(items)} Convs kept in FP32 by rule")
            for node, why in items:
                print(f"  {node:<10} {why}")
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows, "kept": kept, "load_average": load}, indent=1))
        return 0

    return guarded(run, args.debug)


if __name__ == "__main__":
    sys.exit(main())
