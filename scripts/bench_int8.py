#!/usr/bin/env python3
"""INT8 recipes side by side on RTMDet-nano person (docs/int8.md): Convs in INT8, AP on held-out images, speed.

    scripts/bench_int8.py [--shared-data DIR] [--calib-set B] [--eval-set A] [--calib-images N] [--eval-images N]
        [--threads 2] [--rounds 5] [--seconds 1.0] [--cache-dir DIR] [--no-openvino] [--json out.json]

Image sets of the shared data (PROVENANCE.md): A (instances_val2017_subset150.json, 150 images, all categories),
B (person_keypoints_val2017_single_person_subset200.json, 200 single-person images, person only), and B's halves
B1 (the first half of its images by image id: 100) and B2 (the other 100). Calibration on --calib-set (default
B; sets joined by "+", e.g. A+B2; the first --calib-images by file name, default the spec's int8.calib_images),
copied to a temporary folder; AP (person) on --eval-set (default A; every image unless --eval-images). The two
are checked to be disjoint by file name (exit 2 otherwise). The keep rule's thresholds were chosen looking at set
A's AP with calibration on set B (the default); docs/int8.md has the blind re-check on B's halves.

Every engine runs through the suite's backends (Runner interface); throughput is images per second of
runner.infer, all engines alternated round by round in this one process with the same thread count, and
reported as a ratio to ONNX Runtime FP32 at the same batch size (bs1, bs8), with the CPU time per image (the
process's, all threads) beside it and the load average at the start and end of the timing. Prints the table and,
per INT8 recipe, the Convs kept in FP32 and why.

Exit codes: 0 done, 2 bad input (data missing, an unknown set, calibration and evaluation images overlap),
3 runtime failure.
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
SETS = ("A", "B", "B1", "B2")


def build_parser():
    from common.config.parser import SuiteParser  # no prefix matching, did-you-mean, --version
    p = SuiteParser(prog="bench_int8", description=__doc__.split("\n\n")[0])
    p.add_argument("--shared-data", default=os.environ.get("SUITE_SHARED_DATA", "shared/data"))
    p.add_argument("--calib-set", default="B", help="calibration images: A, B, B1, B2, or several joined by '+'")
    p.add_argument("--eval-set", default="A", choices=SETS, help="images AP is measured on")
    p.add_argument("--calib-images", type=int, default=None, help="default: the spec's int8.calib_images")
    p.add_argument("--eval-images", type=int, default=None, help="default: every image of the evaluation set")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="timing rounds, every engine once per round")
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per engine per round")
    p.add_argument("--cache-dir", default=os.environ.get("ENGINE_CACHE_DIR", ".cache/engines"))
    p.add_argument("--no-openvino", action="store_true", help="ONNX Runtime rows only")
    p.add_argument("--no-timing", action="store_true", help="Convs and AP only (bs1 engines, no throughput)")
    p.add_argument("--bias-correction", action="store_true",
                   help="the ONNX Runtime recipe with int8.bias_correction (weight rounding's mean shift folded back)")
    p.add_argument("--json", help="write the figures as JSON here")
    p.add_argument("--debug", action="store_true")
    return p


def _set_annotations(shared: Path, name: str) -> dict:
    """The annotation records of one image set (B1 / B2: set B's records of those images)."""
    path = shared / "coco" / "annotations" / (SET_A if name == "A" else SET_B)
    if not path.is_file():
        raise InputError(f"the annotation file of set {name} is missing (--shared-data)", path)
    ann = json.loads(path.read_text())
    if name in ("B1", "B2"):
        ids = sorted(im["id"] for im in ann["images"])
        half = len(ids) // 2
        keep = set(ids[:half] if name == "B1" else ids[half:])
        ann = {**ann, "images": [im for im in ann["images"] if im["id"] in keep],
               "annotations": [a for a in ann["annotations"] if a["image_id"] in keep]}
    return ann


def _set_names(spec: str, what: str) -> list:
    names = spec.split("+")
    bad = [n for n in names if n not in SETS]
    if bad or len(set(names)) != len(names):
        raise ConfigError(f"{what} set {spec!r}: expected {', '.join(SETS)} or several of them joined by '+'")
    return names


def _eval_annotation(shared: Path, name: str, folder: Path) -> Path:
    """The evaluation set's annotation file: the shared one, or a half of set B written into `folder`."""
    if name in ("A", "B"):
        return shared / "coco" / "annotations" / (SET_A if name == "A" else SET_B)
    path = folder / f"set_{name}.json"
    path.write_text(json.dumps(_set_annotations(shared, name)))
    return path


def _calibration(shared: Path, folder: Path, calib_set: str, eval_set: str, eval_ann: Path, n: int, variant):
    from common.data.calibration import CalibrationSet
    from common.data.coco import DatasetRequest
    pool = sorted({im["file_name"] for s in _set_names(calib_set, "calibration")
                   for im in _set_annotations(shared, s)["images"]})
    names = pool[:n]
    overlap = set(names) & {im["file_name"] for im in _set_annotations(shared, eval_set)["images"]}
    if overlap:
        raise ConfigError(f"{len(overlap)} calibration image(s) of set {calib_set} are images of the evaluation set "
                          f"{eval_set} (e.g. {sorted(overlap)[0]})",
                          shared / "coco" / "annotations" / (SET_A if eval_set == "A" else SET_B))
    folder.mkdir()
    for name in names:
        shutil.copy(shared / "coco" / "val2017" / name, folder / name)
    # CalibrationSet refuses any image whose file name is in the evaluation annotation file again
    return CalibrationSet.for_variant(str(folder), variant, n, DatasetRequest(str(shared / "coco"), str(eval_ann)))


def _coco_stats(runner, variant, images, batch: int) -> dict:
    from common.decode.outputs import get_decoder
    from common.evaluate.metrics import CocoEvaluator
    decoder = get_decoder(variant.decode_cfg)
    ev = CocoEvaluator(images.annotations, variant.label_map, variant.categories)
    for s in range(0, len(images.image_ids), batch):
        out = runner.infer(images.inputs[s:s + batch])
        bi, boxes, scores, labels = decoder(out, images.meta[s:s + batch], variant.decode_cfg)
        ev.add(images.image_ids[s:s + batch][bi], boxes, scores, labels)
    return {k: float(v) for k, v in ev.evaluate(images.image_ids).items()}


def _alternated_throughput(runners: dict, x, rounds: int, seconds: float) -> dict:
    """{name: (images per second, CPU ms per image)} of runner.infer on the batch x, every runner timed once per
    round in turn; medians over the rounds. The CPU time is the process's (every thread of the runtime): under
    a load that takes the cores away from the run it moves less than the wall-clock rate."""
    import numpy as np
    for r in runners.values():
        r.infer(x)
    rates: dict = {k: [] for k in runners}
    cpu: dict = {k: [] for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            n, t0, c0 = 0, time.perf_counter(), time.process_time()
            while True:
                r.infer(x)
                n += 1
                dt = time.perf_counter() - t0
                if dt >= seconds and n >= 3:
                    break
            rates[k].append(n * len(x) / dt)
            cpu[k].append(1000 * (time.process_time() - c0) / (n * len(x)))
    return {k: (float(np.median(rates[k])), float(np.median(cpu[k]))) for k in runners}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        import onnx

        from common.config.specs import load_model
        from common.engine_cache import EngineCache, file_sha256
        from common.data.coco import DatasetRequest
        from common.harness.reference_compare import load_images
        from common.runtime.backends import get_backend
        from common.runtime.backends.base import BuildRequest
        from common.runtime.quantize import int8_convs, settings_for
        shared = Path(args.shared_data)
        onnx_path = shared / ONNX
        if not onnx_path.is_file():
            raise InputError("the shared RTMDet-nano ONNX is missing (--shared-data)", onnx_path)
        variant = load_model("rtmdet").variant()
        cache = EngineCache(Path(args.cache_dir))
        _set_names(args.calib_set, "calibration")
        settings = replace(settings_for(variant, args.calib_images), keep_fp32=())
        if args.bias_correction:
            settings = replace(settings, bias_correction=True)
        batches = (1,) if args.no_timing else BATCHES
        rows, kept = {}, {}
        with tempfile.TemporaryDirectory(prefix="bench_int8.") as tmp:
            eval_ann = _eval_annotation(shared, args.eval_set, Path(tmp))
            images = load_images(variant, DatasetRequest(str(shared / "coco"), str(eval_ann)), args.eval_images)
            calib = _calibration(shared, Path(tmp) / "calib", args.calib_set, args.eval_set, eval_ann,
                                 settings.calib_images, variant)
            sha = file_sha256(onnx_path)

            def request(precision, batch):
                return BuildRequest(onnx_path, sha, precision, batch, variant.input_name, (3, variant.height,
                                    variant.width), cache, {"calibration": calib, "int8": settings})
            ort_int8 = "ORT INT8 (rule, per-tensor activations" + (", bias correction)" if args.bias_correction else ")")
            recipes = [("ORT FP32", "onnxruntime", "fp32"), (ort_int8, "onnxruntime", "int8")]
            if not args.no_openvino:
                recipes += [("OpenVINO FP32", "openvino", "fp32"), ("OpenVINO INT8 (NNCF, rule's ignored scope)",
                                                                    "openvino", "int8")]
            runners: dict = {bs: {} for bs in batches}
            for name, backend_name, precision in recipes:
                backend = get_backend(backend_name, threads=args.threads)
                t0 = time.perf_counter()
                for bs in batches:
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
                row["coco"] = _coco_stats(runners[1][name], variant, images, 1)
                row["AP"] = row["coco"]["AP"]
                rows[name] = row
                print(f"  {name}: built/loaded in {row['build_s']} s, AP {row['AP']:.4f}", flush=True)
            load_start = os.getloadavg()
            for bs in (() if args.no_timing else BATCHES):
                rate = _alternated_throughput(runners[bs], images.inputs[:bs], args.rounds, args.seconds)
                for name, (fps, cpu_ms) in rate.items():
                    rows[name][f"fps_bs{bs}"] = fps
                    rows[name][f"cpu_ms_bs{bs}"] = cpu_ms
                    rows[name][f"speed_bs{bs}"] = fps / rate["ORT FP32"][0]
                    rows[name][f"cpu_speed_bs{bs}"] = rate["ORT FP32"][1] / cpu_ms
        fp32 = rows["ORT FP32"]["AP"]
        load = os.getloadavg()
        timing = ("no timing" if args.no_timing else f"engines alternated {args.rounds} rounds x {args.seconds:g} s in "
                  f"one process; load average {load_start[0]:.1f} at the start of the timing, {load[0]:.1f} at its end")
        print(f"\nRTMDet-nano person, calibration {len(calib.images)} set-{args.calib_set} images, AP on "
              f"{len(images.image_ids)} set-{args.eval_set} images (disjoint by file name), {args.threads} threads, "
              f"{timing}\n")
        speed = "" if args.no_timing else " speed vs ORT FP32, bs1 / bs8 | CPU time vs ORT FP32, bs1 / bs8 |"
        print(f"| recipe | Conv INT8 / 123 | AP (ORT FP32 {fp32:.4f}) | AP - FP32 |{speed}")
        print("| --- | --- | --- | --- |" + ("" if args.no_timing else " --- | --- |"))
        for name, r in rows.items():
            line = f"| {name} | {r['int8_convs']} | {r['AP']:.4f} | {r['AP'] - fp32:+.4f} |"
            if not args.no_timing:
                line += (f" {r['speed_bs1']:.2f} / {r['speed_bs8']:.2f} | {r['cpu_speed_bs1']:.2f} / "
                         f"{r['cpu_speed_bs8']:.2f} |")
            print(line)
        print()
        for name, r in rows.items() if not args.no_timing else ():
            print(f"  {name}: {r['fps_bs1']:.1f} img/s at bs1, {r['fps_bs8']:.1f} img/s at bs8; CPU "
                  f"{r['cpu_ms_bs1']:.0f} / {r['cpu_ms_bs8']:.0f} ms per image")
        for name, items in kept.items():
            print(f"\n{name}: {len(items)} Convs kept in FP32 by rule")
            for node, why in items:
                print(f"  {node:<10} {why}")
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows, "kept": kept, "load_average": load,
                                                   "calib_set": args.calib_set, "eval_set": args.eval_set,
                                                   "calib_images": [p.name for p in calib.images],
                                                   "eval_image_ids": images.image_ids.tolist()}, indent=1))
        return 0

    return guarded(run, args.debug)


if __name__ == "__main__":
    sys.exit(main())
