#!/usr/bin/env python3
"""Where the rule's ONNX Runtime INT8 graph loses its accuracy (docs/int8.md, "Why"): weights or activations, and
which Convs.

    scripts/int8_error_sources.py [--shared-data DIR] [--calib-set A] [--eval-set B1] [--calib-images N]
        [--sqnr-images 16] [--no-per-conv] [--cache-dir DIR] [--json out.json]

Builds the rule's QDQ graph (calibration on --calib-set, as scripts/bench_int8.py does) and measures person AP on
--eval-set for: FP32, the graph itself, the graph with every Conv's weights float (activations INT8 only) and with
every Conv's activation input float (weights INT8 only). Then, unless --no-per-conv, for each INT8 Conv alone (its
activation input only, then its weights only, every other Conv float): the SQNR of the six raw head outputs
against FP32 on the first --sqnr-images calibration images (no labels read), lowest first.

Exit codes: 0 done, 2 bad input (data missing, sets overlap), 3 runtime failure.
"""
from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import ixuca_suite  # noqa: E402,F401  the one bootstrap: sys.path, the repo's .venv (scripts/ixuca_suite.py)
from common.cli import guarded  # noqa: E402
from common.errors import InputError  # noqa: E402


def build_parser():
    from common.config.parser import SuiteParser
    p = SuiteParser(prog="int8_error_sources", description=__doc__.split("\n\n")[0])
    p.add_argument("--shared-data", default="shared/data")
    p.add_argument("--calib-set", default="A")
    p.add_argument("--eval-set", default="B1")
    p.add_argument("--calib-images", type=int, default=None, help="default: the spec's int8.calib_images")
    p.add_argument("--sqnr-images", type=int, default=16)
    p.add_argument("--no-per-conv", action="store_true", help="the four AP figures only")
    p.add_argument("--cache-dir", default=".cache/engines")
    p.add_argument("--json")
    p.add_argument("--debug", action="store_true")
    return p


def qdq_variant(qdq, float_model, act_float=(), w_float=()):
    """A copy of the QDQ graph whose named Convs read their float activation input (act_float) and / or their
    float weights (w_float, taken from the float graph); everything else as quantised."""
    import onnx
    m = onnx.ModelProto()
    m.CopyFrom(qdq)
    producer = {o: n for n in m.graph.node for o in n.output}
    have = {t.name for t in m.graph.initializer}
    float_w = {t.name: t for t in float_model.graph.initializer}
    float_conv = {n.name: n for n in float_model.graph.node if n.op_type == "Conv"}
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        dq = producer.get(n.input[0])
        if n.name in act_float and dq is not None and dq.op_type == "DequantizeLinear":
            n.input[0] = producer[dq.input[0]].input[0]
        if n.name in w_float and n.name in float_conv:
            w = float_conv[n.name].input[1]
            if w not in have:
                m.graph.initializer.append(float_w[w])
                have.add(w)
            n.input[1] = w
    return m


def int8_conv_names(qdq) -> list:
    """Convs of a QDQ graph whose weights are quantised, graph order."""
    producer = {o: n for n in qdq.graph.node for o in n.output}
    return [n.name for n in qdq.graph.node if n.op_type == "Conv" and n.input[1] in producer
            and producer[n.input[1]].op_type == "DequantizeLinear"]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        import numpy as np
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper

        import bench_int8 as bench
        from common.config.specs import load_model
        from common.data.coco import DatasetRequest
        from common.harness.reference_compare import load_images
        from common.runtime.backends.onnxruntime_backend import OrtRunner
        from common.runtime.int8_structure import split_network
        from common.runtime.quantize import prepare_float_model, quantize_onnx, settings_for
        shared = Path(args.shared_data)
        onnx_path = shared / bench.ONNX
        if not onnx_path.is_file():
            raise InputError("the shared RTMDet-nano ONNX is missing (--shared-data)", onnx_path)
        variant = load_model("rtmdet").variant()
        settings = replace(settings_for(variant, args.calib_images), keep_fp32=())
        bench._set_names(args.calib_set, "calibration")
        with tempfile.TemporaryDirectory(prefix="int8_error_sources.") as tmp:
            tmp = Path(tmp)
            eval_ann = bench._eval_annotation(shared, args.eval_set, tmp)
            images = load_images(variant, DatasetRequest(str(shared / "coco"), str(eval_ann)), None)
            calib = bench._calibration(shared, tmp / "calib", args.calib_set, args.eval_set, eval_ann,
                                       settings.calib_images, variant)
            info = quantize_onnx(onnx_path, tmp / "q.onnx", calib, settings, variant.input_name,
                                 Path(args.cache_dir))
            fmodel = onnx.load(str(prepare_float_model(onnx_path, settings, tmp / "f.onnx")))
            q = onnx.load(str(tmp / "q.onnx"))
            x = list(calib.batches(1))[: args.sqnr_images]  # before the calibration folder goes
        convs = int8_conv_names(q)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 2

        def ap(m) -> dict:
            sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
            return bench._coco_stats(OrtRunner(sess, variant.input_name), variant, images, 1)

        out = {"calib_set": args.calib_set, "eval_set": args.eval_set, "calib_images": len(calib.images),
               "eval_images": len(images.image_ids), "int8_convs": len(convs), "ap": {}, "per_conv": []}
        for label, m in (("FP32", fmodel), ("rule's INT8 graph", q),
                         ("weights float (activations INT8 only)", qdq_variant(q, fmodel, w_float=convs)),
                         ("activations float (weights INT8 only)", qdq_variant(q, fmodel, act_float=convs))):
            st = ap(m)
            out["ap"][label] = st
            f32 = out["ap"]["FP32"]
            print(f"  {label:40s} AP {st['AP']:.4f} ({st['AP'] - f32['AP']:+.4f})  AP50 {st['AP50']:.4f}  "
                  f"AP75 {st['AP75']:.4f}", flush=True)
        if not args.no_per_conv:
            heads = list(split_network(fmodel).head_outputs)

            def head_outputs(m):
                m2 = onnx.ModelProto()
                m2.CopyFrom(m)
                m2.graph.output.extend([helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in heads])
                sess = ort.InferenceSession(m2.SerializeToString(), so, providers=["CPUExecutionProvider"])
                return [sess.run(heads, {variant.input_name: xi}) for xi in x]

            ref = head_outputs(fmodel)

            def sqnr(m) -> list:
                got = head_outputs(m)
                return [round(float(10 * np.log10(sum(float((r[h] ** 2).sum()) for r in ref) / max(
                    sum(float(((g[h] - r[h]) ** 2).sum()) for g, r in zip(got, ref)), 1e-30))), 1)
                    for h in range(len(heads))]

            print(f"\nhead-output SQNR (dB) vs FP32 on {len(x)} calibration images, one Conv INT8 at a time; heads "
                  f"{', '.join(heads)}", flush=True)
            for c in convs:
                others = [o for o in convs if o != c]
                act = sqnr(qdq_variant(q, fmodel, act_float=others, w_float=convs))
                wts = sqnr(qdq_variant(q, fmodel, act_float=convs, w_float=others))
                out["per_conv"].append({"node": c, "activation_only": act, "weights_only": wts})
            for r in sorted(out["per_conv"], key=lambda r: min(r["activation_only"] + r["weights_only"])):
                print(f"  {r['node']:<10} activation {' '.join(f'{v:5.1f}' for v in r['activation_only'])}   "
                      f"weights {' '.join(f'{v:5.1f}' for v in r['weights_only'])}")
        out["kept_by_rule"] = info["kept_by_rule"]
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
        return 0

    return guarded(run, args.debug)


if __name__ == "__main__":
    sys.exit(main())
