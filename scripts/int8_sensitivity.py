#!/usr/bin/env python3
"""INT8 sensitivity analysis: which nodes, kept in FP32, recover the accuracy INT8 loses (docs/engines.md).

    scripts/int8_sensitivity.py --model rtmdet --onnx M.onnx --calib-dir CALIB/ --dataset-dir DIR \
        --ann HELD_APART.json [--eval-ann EVAL.json] [--search-images 50] [--tolerance 0.02]

Calibrates on --calib-dir (refused when it holds evaluation or held-apart images), keeps in FP32 the Convs the
target's scale granularity cannot hold (the structural rule, common/runtime/int8_structure.py, each printed with
its reason), ranks the nodes the rule leaves by the error each adds against the FP32 reference on calibration
images, then searches (doubling, then bisecting) the fewest of them kept in FP32 that bring AP on the held-apart
images (--ann) within --tolerance of FP32. It starts from nothing but the rule: the spec's own keep_fp32 list is
used only with --from-spec. Prints the curve (AP vs nodes kept in FP32) and the `int8:` spec snippet. With --eval-ann, the curve's points are also
evaluated on that disjoint evaluation set with FP32 and INT8 timed side by side in the same process.

Exit codes: 0 a node list within tolerance was found, 1 none was, 2 bad input or configuration, 3 runtime
failure, 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import ixuca_suite  # noqa: E402,F401  the one bootstrap: sys.path, the repo's .venv (scripts/ixuca_suite.py)
from common.cli import guarded  # noqa: E402
from common.config.options import positive_int as _positive_int  # noqa: E402
from common.errors import EXIT_PASS, EXIT_TARGET_FAILED, ConfigError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    from common.config.parser import SuiteParser  # no prefix matching, did-you-mean, --version
    p = SuiteParser(prog="int8_sensitivity", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="rtmdet", help="model folder or model.yaml (default: rtmdet)")
    p.add_argument("--variant", help="variant of the spec (default: its default_variant)")
    p.add_argument("--onnx", default=env("ONNX_MODEL"))
    p.add_argument("--calib-dir", default=env("CALIB_DIR"), required=not env("CALIB_DIR"))
    p.add_argument("--calib-images", type=_positive_int, help="calibration images (default: the spec's int8 "
                   "calib_images, else 32)")
    p.add_argument("--dataset-dir", default=env("DATASETS_DIR"))
    p.add_argument("--images-dir")
    p.add_argument("--ann", required=True, help="held-apart images the search judges AP on (not calibration, "
                   "not the final evaluation)")
    p.add_argument("--eval-ann", help="optional evaluation set (disjoint from both): AP and FPS of each point")
    p.add_argument("--search-images", type=_positive_int, default=50, help="held-apart images used (default 50)")
    p.add_argument("--eval-images", type=_positive_int, help="evaluation images used (default all)")
    p.add_argument("--error-images", type=_positive_int, default=2,
                   help="calibration images the per-node error is measured on (default 2)")
    p.add_argument("--error-nodes", type=_positive_int,
                   help="measure the per-node error of only the first N quantised nodes (graph order; quick checks: "
                        "the others are ranked after them, unmeasured)")
    p.add_argument("--tolerance", type=float, default=0.02, help="AP below FP32 accepted (default 0.02)")
    p.add_argument("--from-spec", action="store_true",
                   help="start from the spec's int8.keep_fp32 list (default: from nothing but the structural rule)")
    p.add_argument("--max-keep", type=_positive_int, help="most nodes kept in FP32 the search tries")
    p.add_argument("--timing-runs", type=_positive_int, default=20, help="runs per engine per timing round")
    p.add_argument("--cache-dir", default=env("ENGINE_CACHE_DIR", ".cache/engines"))
    p.add_argument("--report", help="JSON report path")
    p.add_argument("--debug", action="store_true")
    return p


def _time_side_by_side(paths: dict, x, input_name: str, runs: int, rounds: int = 3) -> dict:
    """Compute-only FPS (batch * 1000 / mean ms) of each engine, measured in interleaved rounds in one process
    so that load from other processes on a shared CPU hits them alike."""
    import numpy as np

    from common.compare.int8_search import _session
    sessions = {k: _session(p) for k, p in paths.items()}
    times = {k: [] for k in paths}
    for s in sessions.values():
        s.run(None, {input_name: x})  # warm-up
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(runs):
                t0 = time.perf_counter()
                s.run(None, {input_name: x})
                times[k].append(time.perf_counter() - t0)
    return {k: round(x.shape[0] / float(np.mean(v)), 1) for k, v in times.items()}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from common.data.calibration import CalibrationSet, check_not_evaluation_set
        from common.data.coco import DatasetRequest, read_annotations, resolve_dataset
        from common.harness.reference_compare import load_images
        from common.compare.int8_search import chosen, evaluate_ap, node_errors, search
        from common.runtime.quantize import prepare_float_model, quantize_onnx, settings_for, spec_snippet
        from common.harness.engine import resolve_onnx
        from common.harness.requests import EngineRequest
        from common.config.specs import load_model

        if not 0 <= args.tolerance < 1:
            raise ConfigError(f"--tolerance must be in [0, 1), got {args.tolerance}")
        variant = load_model(args.model).variant(args.variant)
        held_apart = DatasetRequest(args.dataset_dir, args.ann, args.images_dir)
        onnx_path = resolve_onnx(EngineRequest(cache_dir=args.cache_dir, precision="int8", onnx=args.onnx), variant)
        settings = settings_for(variant, args.calib_images)
        if not args.from_spec:   # the search starts from nothing but the rule, never from a list it proposed before
            settings = replace(settings, keep_fp32=())
        # refused when it holds held-apart images (checked against --ann) ...
        calib = CalibrationSet.for_variant(args.calib_dir, variant, settings.calib_images, held_apart)
        eval_ann = None
        if args.eval_ann:  # ... or evaluation images
            eval_dir, eval_ann = resolve_dataset(args.dataset_dir, args.eval_ann, args.images_dir)
            names = {im["file_name"].rsplit("/", 1)[-1] for im in read_annotations(eval_ann)["images"]}
            check_not_evaluation_set(calib.directory, list(calib.images), eval_dir, names)
            search_names = {im["file_name"] for im in read_annotations(resolve_dataset(
                args.dataset_dir, args.ann, args.images_dir)[1])["images"]}
            if search_names & names:
                raise ConfigError(f"{len(search_names & names)} held-apart image(s) are also evaluation images; "
                                  "the search must not see the evaluation set", eval_ann)
        cache_root = Path(args.cache_dir)
        held = load_images(variant, held_apart, args.search_images)
        print(f"== INT8 sensitivity: {variant.id}, {len(calib.images)} calibration images ({calib.directory}), "
              f"{len(held.image_ids)} held-apart images")
        with tempfile.TemporaryDirectory(prefix="int8sens.") as tmp:
            tmp = Path(tmp)
            float_path = prepare_float_model(onnx_path, settings, tmp / "float.onnx")
            full = tmp / "int8_full.onnx"
            t0 = time.perf_counter()
            info = quantize_onnx(onnx_path, full, calib, settings, variant.input_name, cache_root,
                                 dict(variant.extra_inputs))
            print(f" quantised ({settings.format}, {settings.method}, per_channel={settings.per_channel}, target "
                  f"{info['target']}) in {time.perf_counter() - t0:.1f} s: {info['int8_convs']} Convs in INT8; "
                  f"post-processing ({info['postprocess_nodes']} nodes, found from the graph) left float")
            by_rule = list(info["kept_by_rule"])
            print(f" kept in FP32 by rule ({len(by_rule)}):" if by_rule else " kept in FP32 by rule: none")
            for node, why in by_rule:
                print(f"   {node:<24} {why}")
            if settings.keep_fp32:
                print(f" kept in FP32 by the spec (--from-spec): {len(settings.keep_fp32)}")
            import numpy as np
            x = np.concatenate(list(calib.batches(1))[:args.error_images])
            rows = node_errors(float_path, full, x, variant.input_name, settings.op_types, log=print,
                               limit=args.error_nodes)
            rows = [r for r in rows if r["node"] not in settings.keep_fp32]   # the rule's are not quantised at all
            print(f" per-node error on {len(x)} calibration image(s), worst first (SQNR vs FP32 at the last "
                  "quantisable tensors with only that node quantised; of the node's output in the INT8 graph):")
            for r in [r for r in rows if r["alone_db"] is not None][:10]:
                print(f"   {r['node']:<24} {r['op_type']:<8} alone {r['alone_db']:6.2f} dB   in the INT8 graph "
                      f"{r['sqnr_db']:6.2f} dB")
            fp32_m, _ = evaluate_ap(onnx_path, variant, held)
            print(f" FP32 AP on the held-apart images: {fp32_m['AP']:.4f}  (tolerance {args.tolerance})")
            points = search(onnx_path, variant, calib, settings, held, [r["node"] for r in rows], fp32_m["AP"],
                            args.tolerance, cache_root, max_keep=args.max_keep)
            best = chosen(points, fp32_m["AP"], args.tolerance)
            report = {"model": variant.model, "variant": variant.name, "onnx": str(onnx_path),
                      "calibration": calib.describe(), "settings": settings.key(),
                      "held_apart": {"annotation": args.ann, "num_images": len(held.image_ids),
                                     "fp32": {"AP": fp32_m["AP"], "AP50": fp32_m["AP50"]}},
                      "kept_by_rule": [{"node": n, "why": w} for n, w in by_rule], "from_spec": args.from_spec,
                      "int8_convs_rule_only": info["int8_convs"],
                      "node_errors": rows, "tolerance": args.tolerance,
                      "curve": [{"keep": p.keep, "AP": p.AP, "AP50": p.AP50, "nodes": list(p.nodes)} for p in points],
                      "chosen": None if best is None else best.keep}
            print("\n curve (held-apart images): nodes kept in FP32 -> AP")
            for p in points:
                print(f"   {p.keep:4d}  AP {p.AP:.4f}  AP50 {p.AP50:.4f}{'   <- chosen' if p is best else ''}")
            if eval_ann is not None:
                report["evaluation"] = _evaluate_points(args, variant, onnx_path, calib, settings, points, cache_root,
                                                        tmp, fp32_m)
            keep = list(settings.keep_fp32) + list(best.nodes if best else points[-1].nodes)
            print("\n spec snippet (models/<model>/model.yaml, under variants:):")
            print(spec_snippet(variant.name, settings, keep))
            if best is None:
                print(f"\n no node list within {args.tolerance} AP of FP32 was found (the snippet keeps the most "
                      "nodes tried)")
        if args.report:
            from common.compare.fidelity_report import write_json
            write_json(Path(args.report), report)
            print(f" report: {args.report}")
        return EXIT_PASS if best is not None else EXIT_TARGET_FAILED

    return guarded(run, args.debug)


def _evaluate_points(args, variant, onnx_path, calib, settings, points, cache_root, tmp, held_fp32) -> dict:
    """AP on the evaluation set and compute-only FPS of FP32 and of every curve point, side by side."""
    from common.data.coco import DatasetRequest
    from common.harness.reference_compare import load_images
    from common.compare.int8_search import evaluate_ap
    from common.runtime.quantize import quantize_onnx
    ev = load_images(variant, DatasetRequest(args.dataset_dir, args.eval_ann, args.images_dir),
                     args.eval_images or 10 ** 9)
    paths = {"fp32": onnx_path}
    for p in points:
        q = tmp / f"keep{p.keep}.onnx"
        quantize_onnx(onnx_path, q, calib, replace(settings, keep_fp32=tuple(settings.keep_fp32) + p.nodes),
                      variant.input_name, cache_root, dict(variant.extra_inputs))
        paths[f"int8_keep{p.keep}"] = q
    aps = {k: evaluate_ap(p, variant, ev)[0] for k, p in paths.items()}
    fps = _time_side_by_side(paths, ev.inputs[:1], variant.input_name, args.timing_runs)
    print(f"\n evaluation set {args.eval_ann} ({len(ev.image_ids)} images, disjoint from calibration and "
          "held-apart); FPS compute-only at batch 1, FP32 and INT8 timed side by side in this process on a "
          "shared CPU:")
    out = {}
    for k in paths:
        print(f"   {k:<16} AP {aps[k]['AP']:.4f}  AP50 {aps[k]['AP50']:.4f}  ({aps[k]['AP'] - aps['fp32']['AP']:+.4f})"
              f"  fps {fps[k]:7.1f}")
        out[k] = {"AP": aps[k]["AP"], "AP50": aps[k]["AP50"], "fps_compute": fps[k]}
    return {"annotation": args.eval_ann, "num_images": len(ev.image_ids), "points": out}


if __name__ == "__main__":
    sys.exit(main())
