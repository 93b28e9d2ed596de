"""INT8 sensitivity analysis: which nodes, kept in FP32, recover the accuracy INT8 loses.

1. Per-node error on real calibration images (never evaluation images): for each quantised node, the FP32
   graph with only that node quantised (its activation inputs through the QDQ graph's own QuantizeLinear scale
   and zero point, its weights dequantised), and the signal-to-noise ratio (SQNR, dB) against FP32 at the
   network's last quantisable tensors (a detector's raw head, before any NMS in the graph; the worst of them,
   each on its own scale). That is the node's
   own error as the rest of the network carries and amplifies it: a layer whose error is small where it is made
   but grows through ill-conditioned layers after it ranks high. Nodes are ranked by it, worst first.
2. Search judged on detections: nodes are kept in FP32 in that order, doubling the count (1, 2, 4, ...) until AP
   on a held-apart image set (disjoint from calibration and from the final evaluation) is within the tolerance
   of FP32 AP, then bisected down to the fewest nodes that still are. Every evaluated point is on the curve
   (AP vs nodes kept in FP32).

Quantisation reuses the cached calibration ranges (common/runtime/quantize.py), so each point costs one quantiser pass
and one pass over the held-apart images.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from common.runtime.quantize import Int8Settings, quantize_onnx


@dataclass
class Point:
    keep: int
    nodes: tuple
    AP: float
    AP50: float
    seconds_per_image: float


def _session(path: Path, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def evaluate_ap(onnx_path: Path, variant, images, batch: int = 1, threads: int = 0) -> tuple[dict, float]:
    """(COCO metrics, seconds per image) of an ONNX on preloaded images (common.compare.fidelity_judge.Images)."""
    from common.decode.outputs import get_decoder
    from common.evaluate.metrics import CocoEvaluator

    sess = _session(onnx_path, threads)
    names = [o.name for o in sess.get_outputs()]
    decoder = get_decoder(variant.decode_cfg)
    ev = CocoEvaluator(images.annotations, variant.label_map, variant.categories)
    n = len(images.image_ids)
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        x = images.inputs[s : s + batch]
        extra = {
            k: np.broadcast_to(np.asarray(v, np.float32), (len(x), len(v))).copy()
            for k, v in variant.extra_inputs.items()
        }
        out = dict(zip(names, sess.run(names, {variant.input_name: x, **extra})))
        bi, boxes, scores, labels = decoder(out, images.meta[s : s + batch], variant.decode_cfg)
        ev.add(images.image_ids[s : s + batch][bi], boxes, scores, labels)
    per_image = (time.perf_counter() - t0) / max(n, 1)
    return ev.evaluate(images.image_ids), per_image


# ---------------------------------------------------------------- per-node error


def _sqnr(ref: list, cand: list) -> float:
    a = np.concatenate([np.ravel(v).astype(np.float64) for v in ref])
    b = np.concatenate([np.ravel(v).astype(np.float64) for v in cand])
    noise = float(np.linalg.norm(a - b))
    signal = float(np.linalg.norm(a))
    if noise == 0:
        return 99.0
    return float(20 * math.log10(max(signal, 1e-12) / noise))


def _quantised_inputs(node, producer: dict, qinit: dict, tag: str):
    """How the QDQ graph feeds `node`: (inputs, nodes, initializers) that recreate its quantised inputs from
    FP32 tensors (activations through the QDQ graph's own QuantizeLinear scale / zero point, weights
    dequantised). None when the node has no quantised input."""
    from onnx import helper, numpy_helper

    inputs, nodes, inits, quantised = [], [], [], False
    for k, name in enumerate(node.input):
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            inputs.append(name)
            continue
        quantised = True
        src = dq.input[0]
        if src in qinit:  # a weight: dequantised here, as the INT8 engine sees it
            w = numpy_helper.to_array(qinit[src]).astype(np.float32)
            scale = numpy_helper.to_array(qinit[dq.input[1]]).astype(np.float32)
            zero = (
                numpy_helper.to_array(qinit[dq.input[2]]).astype(np.float32)
                if len(dq.input) > 2
                else np.zeros_like(scale)
            )
            if scale.ndim == 1 and scale.size > 1:
                axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
                shape = [1] * w.ndim
                shape[axis] = -1
                scale, zero = scale.reshape(shape), zero.reshape(shape)
            inits.append(numpy_helper.from_array((w - zero) * scale, f"{tag}_w{k}"))
            inputs.append(f"{tag}_w{k}")
        else:  # an activation: its FP32 value through the node's own Q/DQ
            q = producer[src]
            inits += [qinit[t] for t in q.input[1:] if t in qinit]
            nodes += [
                helper.make_node("QuantizeLinear", [q.input[0], *q.input[1:]], [f"{tag}_q{k}"]),
                helper.make_node("DequantizeLinear", [f"{tag}_q{k}", *q.input[1:]], [f"{tag}_dq{k}"]),
            ]
            inputs.append(f"{tag}_dq{k}")
    return (inputs, nodes, inits) if quantised else None


def _final_tensors(fmodel, candidates: set) -> list:
    """Outputs of the candidate nodes that reach no other candidate: the network's last quantisable tensors (the
    raw head of a detector, before any decoding / NMS inside the graph), where each node's error is judged."""
    consumers: dict[str, list] = {}
    for n in fmodel.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    by_name = {n.name: n for n in fmodel.graph.node}
    reach: dict[str, bool] = {}

    def reaches(tensor, seen):
        if tensor in reach:
            return reach[tensor]
        hit = False
        for c in consumers.get(tensor, []):
            if c.name in candidates or (c.name not in seen and any(reaches(o, seen | {c.name}) for o in c.output)):
                hit = True
                break
        reach[tensor] = hit
        return hit

    return [o for name in sorted(candidates) for o in by_name[name].output[:1] if not reaches(o, {name})]


def node_errors(
    float_path: Path,
    qdq_path: Path,
    x: np.ndarray,
    input_name: str,
    op_types: tuple,
    log=None,
    limit: int | None = None,
) -> list[dict]:
    """Per quantised node, on real images: `alone_db`, the SQNR (dB) against FP32, at the network's last
    quantisable tensors, of the FP32 graph with only this node quantised (its own error as the rest of the
    network carries and amplifies it), and `sqnr_db`, the node output's SQNR in the fully quantised graph (the
    error accumulated up to it). Sorted, most damaging alone first."""
    import sys

    import onnx
    import onnxruntime as ort

    from common.compare.fp16_range import graph_types as _types
    from common.compare.fp16_range import run_exposed as _run_exposed

    fmodel, qmodel = onnx.load(str(float_path)), onnx.load(str(qdq_path))
    qinit = {t.name: t for t in qmodel.graph.initializer}
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    types = set(op_types)
    fnodes = {n.name: n for n in fmodel.graph.node}
    plans = {}
    for node in qmodel.graph.node:
        if node.name in fnodes and (not types or node.op_type in types):
            plan = _quantised_inputs(node, producer, qinit, f"{node.name}__q")
            if plan is not None:
                plans[node.name] = plan
    final = _final_tensors(fmodel, set(plans))
    unmeasured = []
    if limit is not None and limit < len(plans):  # quick checks: the first `limit` nodes in graph order
        names = list(plans)
        unmeasured = names[limit:]
        plans = {k: plans[k] for k in names[:limit]}
    f_types, q_types = _types(fmodel), _types(qmodel)
    ref = _run_exposed(fmodel, final, f_types, input_name, x)
    outs = sorted({fnodes[n].output[0] for n in plans} & set(q_types) & set(f_types))
    ref_outs = _run_exposed(fmodel, outs, f_types, input_name, x)
    cum = _run_exposed(qmodel, outs, q_types, input_name, x)
    from onnx import helper

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    rows = []
    for k, (name, (inputs, nodes, inits)) in enumerate(plans.items()):
        m = onnx.ModelProto()
        m.CopyFrom(fmodel)
        for n in m.graph.node:
            if n.name == name:
                del n.input[:]
                n.input.extend(inputs)
        m.graph.node.extend(nodes)
        have = {i.name for i in m.graph.initializer}
        m.graph.initializer.extend([t for t in inits if t.name not in have])
        del m.graph.output[:]
        m.graph.output.extend([helper.make_tensor_value_info(t, f_types[t], None) for t in final])
        # a node is inserted before its consumer's position only by name: ONNX needs topological order
        _sort_nodes(m.graph)
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        got = [sess.run(final, {input_name: x[i : i + 1]}) for i in range(len(x))]
        # the worst final tensor, each on its own scale: pooled, box distances (hundreds of pixels) would drown
        # the error of score logits (units), which decide what is detected
        db = min(_sqnr(ref[t], [g[j] for g in got]) for j, t in enumerate(final))
        out = fnodes[name].output[0]
        rows.append(
            {
                "node": name,
                "op_type": fnodes[name].op_type,
                "alone_db": round(db, 2),
                "sqnr_db": round(_sqnr(ref_outs[out], cum[out]), 2) if out in cum else None,
            }
        )
        if log and ((k + 1) % 25 == 0 or k + 1 == len(plans)):
            log(f"   {k + 1}/{len(plans)} nodes measured")
            sys.stdout.flush()
    rows.sort(key=lambda r: r["alone_db"])
    return rows + [{"node": n, "op_type": fnodes[n].op_type, "alone_db": None, "sqnr_db": None} for n in unmeasured]


def _sort_nodes(graph):
    """Order the graph's nodes topologically (appended Q/DQ nodes go before the node that reads them)."""
    produced = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in produced for i in n.input):
                ordered.append(n)
                produced.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or a dangling input: keep the rest as they were
            ordered += rest
            break
        pending = rest
    nodes = [type(n)() for n in ordered]
    for a, b in zip(nodes, ordered):
        a.CopyFrom(b)
    del graph.node[:]
    graph.node.extend(nodes)


# ---------------------------------------------------------------- search


def search(
    onnx_path: Path,
    variant,
    calib,
    settings: Int8Settings,
    images,
    ranking: list,
    fp32_ap: float,
    tolerance: float,
    cache_root: Path,
    log=print,
    max_keep: int | None = None,
    threads: int = 0,
) -> list:
    """Points of AP vs nodes kept in FP32 (in ranking order): doubling, then bisection to the fewest nodes
    within tolerance of fp32_ap. Returns every evaluated Point, sorted by node count."""
    points: dict[int, Point] = {}
    # keeping every quantised node in FP32 would leave nothing quantised
    max_keep = min(max_keep or len(ranking), len(ranking) - 1)

    def at(k: int) -> Point:
        if k not in points:
            keep = tuple(ranking[:k])
            with tempfile.TemporaryDirectory(prefix="int8search.") as tmp:
                q = Path(tmp) / "q.onnx"
                quantize_onnx(
                    onnx_path,
                    q,
                    calib,
                    replace(settings, keep_fp32=tuple(settings.keep_fp32) + keep),
                    variant.input_name,
                    cache_root,
                    dict(variant.extra_inputs),
                )
                m, spi = evaluate_ap(q, variant, images, threads=threads)
            points[k] = Point(k, keep, m["AP"], m["AP50"], spi)
            log(f"  keep {k:3d} in FP32: AP {m['AP']:.4f}  AP50 {m['AP50']:.4f}  ({fp32_ap - m['AP']:+.4f} below FP32)")
        return points[k]

    def ok(k: int) -> bool:
        return fp32_ap - at(k).AP <= tolerance

    lo, k = 0, 0
    if not ok(0):
        k = 1
        while k < max_keep and not ok(k):
            lo, k = k, min(2 * k, max_keep)
        if ok(k):  # bisect in (lo, k]: the fewest nodes within tolerance
            hi = k
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if ok(mid):
                    hi = mid
                else:
                    lo = mid
    return [points[k] for k in sorted(points)]


def chosen(points: list, fp32_ap: float, tolerance: float) -> Point | None:
    """The point with the fewest FP32 nodes within tolerance, else None."""
    good = [p for p in points if fp32_ap - p.AP <= tolerance]
    return min(good, key=lambda p: p.keep) if good else None
