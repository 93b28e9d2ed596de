"""The FP16 range check: can every float16 tensor of an FP16 graph hold what the FP32 model computes?

An FP16 engine on onnxruntime's CPU provider computes many ops in FP32 between inserted casts and drops a cast
pair between two such ops, so a value > 65504 can pass through it untouched while an FP16 device turns it into
Inf. Judging the CPU engine's outputs therefore cannot say whether the graph is sound on a device. This check
judges the FP16 graph itself: each float16 tensor is mapped back to the FP32 tensor it holds, and the FP32
reference's values say whether float16 can hold it:

- overflow:  a finite FP32 value with |x| > 65504 (float16 gives Inf),
- underflow: the float16 rounding of the FP32 values (subnormals, values flushed to zero) leaves the tensor below
             the node cosine tolerance, i.e. the values that matter sit below float16's normal range,
- underflow to zero: on a device that flushes float16 subnormals to zero (the `fp16_subnormals: flush` model,
             the strict default: whether MR-V100 keeps them is not publicly documented), the flushed rounding
             leaves the tensor below the node cosine tolerance although the subnormals would have held it,
- nonfinite: the FP16 graph run here (every tensor exposed, so every float16 tensor is materialised) holds
             NaN / Inf where the reference is finite, in any tensor.

The same scan also measures each tensor of the FP16 graph against its FP32 source (cosine), which the
localisation (common/compare/fp16_localise.py) uses. Statistics are float32 and one pass per tensor, with exact work
only where a cheap bound cannot decide (see _ref_range, _pair_stats).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RANGE_CHECK = 2  # the version of the check: change it when its answer changes (remembered answers)
FP16_MAX = 65504.0
FP16_MIN_NORMAL = 6.104e-05  # below it float16 keeps fewer significant bits, and nothing below ~6e-8
FP16_HALF_TINY = 2.0**-25  # a value below half the smallest subnormal rounds to zero
FP16_NORMAL = 2.0**-14  # the smallest normal float16; a device that flushes subnormals makes less zero
RANGE_REASONS = ("overflow", "underflow", "underflow_to_zero", "nonfinite")
SUBNORMAL_MODELS = ("flush", "keep")


def subnormal_model(tol) -> str:
    """The float16 subnormal model a tolerance asks for: flush (the strict default) or keep."""
    return getattr(tol, "fp16_subnormals", None) or "flush"


# ---------------------------------------------------------------- graphs and exposed tensors


def graph_types(model) -> dict:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - large or unusual graphs: fall back to what the file declares
        inferred = model
    g = inferred.graph
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in list(g.value_info) + list(g.output) + list(g.input)
        if v.type.HasField("tensor_type")
    }
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def session_with_outputs(model, names: list, types: dict):
    import onnx
    import onnxruntime as ort
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            m.graph.output.append(helper.make_tensor_value_info(name, types[name], None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # graph optimisations would fuse nodes away and with them the tensors we ask for
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def images_per_call(model, input_name: str, n: int) -> int:
    """All images in one call when the graph's batch dimension is free (far fewer runs of a graph with every
    tensor exposed), else one image per call."""
    dim = next((i.type.tensor_type.shape.dim[0] for i in model.graph.input if i.name == input_name), None)
    return n if dim is not None and not dim.HasField("dim_value") else 1


def run_exposed(model, names: list, types: dict, input_name: str, x: np.ndarray, extra=None, step: int = 1) -> dict:
    """{tensor: [value per call of `step` images]} with every named tensor exposed as an output. `extra`: the
    other graph inputs, one row each ([1, ...]), repeated for every image of a call."""
    if not names:
        return {}
    sess = session_with_outputs(model, names, types)
    values = []
    for i in range(0, len(x), step):
        xi = x[i : i + step]
        feeds = {
            k: np.ascontiguousarray(np.broadcast_to(v, (len(xi), *np.shape(v)[1:]))) for k, v in (extra or {}).items()
        }
        values.append(sess.run(names, {input_name: xi, **feeds}))
    return {n: [v[k] for v in values] for k, n in enumerate(names)}


def source_map(model32, model16) -> dict:
    """{tensor of the FP16 graph: the FP32 tensor whose value it holds}. The converter keeps node names: a node's
    outputs map position by position (a blocked node's renamed FP32 output too); the casts and identities it
    inserts hold their input's value; graph inputs and initializers keep their names."""
    names32 = (
        {o for n in model32.graph.node for o in n.output}
        | {i.name for i in model32.graph.input}
        | {t.name for t in model32.graph.initializer}
    )
    nodes32 = {n.name: n for n in model32.graph.node if n.name}
    src = {n: n for n in names32}
    for t in list(model16.graph.initializer) + list(model16.graph.input):
        if t.name in names32:
            src[t.name] = t.name
    for node in model16.graph.node:
        twin = nodes32.get(node.name)
        for k, out in enumerate(node.output):
            if not out:
                continue
            if twin is not None and twin.op_type == node.op_type and k < len(twin.output):
                src[out] = twin.output[k]
            elif out in names32:
                src[out] = out
            elif node.op_type in ("Cast", "Identity") and node.input[0] in src:
                src[out] = src[node.input[0]]
    return src


# ---------------------------------------------------------------- float32 statistics


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).ravel()


@dataclass
class RefRange:
    """What float16 makes of the FP32 values of one tensor (over all images)."""

    max_abs: float
    overflow: int  # finite values with |x| > 65504
    flushed: int  # non-zero values that round to zero (with subnormals flushed: that round below 2^-14)
    quant_cosine: float  # cosine of the values against their float16 rounding (finite, in-range values)
    flush_cosine: float = 1.0  # the same with float16 subnormals flushed to zero (the `flush` model)


# RMS above which rounding cannot cost 1e-3 of cosine: 1 - cos <= |e|^2 / |v|^2 with |e_i| <= 2^-25 (subnormals
# kept) or < 2^-14 (flushed) per value plus 2^-11 relative
_SAFE_RMS = {"keep": 1e-5, "flush": 4e-3}


def _ref_range(ref: list, subnormals: str = "flush") -> RefRange:
    """One dot product per image decides almost every tensor: sqrt(sum x^2) bounds max |x| (no overflow when it is
    <= 65504), and float16's rounding error is at most 2^-25 per value (2^-14 where subnormals are flushed) plus
    2^-11 relative, so a tensor whose RMS exceeds _SAFE_RMS cannot lose 1e-3 of cosine to underflow. Only the
    rest is rounded to float16 and measured."""
    flush = subnormals == "flush"
    n, rr = 0, 0.0
    for a in ref:
        v = _f32(a)
        n += v.size
        rr += float(np.dot(v, v))
    if n == 0:
        return RefRange(0.0, 0, 0, 1.0)
    if np.isfinite(rr) and rr <= FP16_MAX**2 and rr > n * _SAFE_RMS[subnormals] ** 2:
        return RefRange(float(np.sqrt(rr)), 0, 0, 1.0)
    max_abs, overflow, flushed, dot_rq, qq, rr_in = 0.0, 0, 0, 0.0, 0.0, 0.0
    dot_rz, zz = 0.0, 0.0
    for a in ref:
        v = _f32(a)
        fin = np.isfinite(v)
        if not fin.all():
            v = v[fin]
        if not v.size:
            continue
        av = np.abs(v)
        max_abs = max(max_abs, float(av.max()))
        big = av > FP16_MAX
        overflow += int(big.sum())
        if big.any():
            v = v[~big]
            av = av[~big]
        q = v.astype(np.float16).astype(np.float32)
        v64, q64 = v.astype(np.float64), q.astype(np.float64)  # tiny values: float32 products would underflow
        dot_rq += float(np.dot(v64, q64))
        qq += float(np.dot(q64, q64))
        rr_in += float(np.dot(v64, v64))
        if flush:
            sub = np.abs(q) < FP16_NORMAL  # a subnormal result (or an input read as one) becomes zero
            flushed += int((sub & (av > 0)).sum())
            z64 = np.where(sub, 0.0, q64)
            dot_rz += float(np.dot(v64, z64))
            zz += float(np.dot(z64, z64))
        else:
            flushed += int(((av > 0) & (av < FP16_HALF_TINY)).sum())

    def cosine(dot, cc):
        return 1.0 if rr_in == 0.0 else (0.0 if cc == 0.0 else float(dot / np.sqrt(rr_in * cc)))

    return RefRange(max_abs, overflow, flushed, cosine(dot_rq, qq), cosine(dot_rz, zz) if flush else 1.0)


def range_reason(rng: RefRange, tol) -> str | None:
    """The range finding of a float16 tensor from its FP32 values, or None."""
    if rng.overflow:
        return "overflow"
    if rng.quant_cosine < tol.node_min_cosine:
        return "underflow"
    if rng.flush_cosine < tol.node_min_cosine:
        return "underflow_to_zero"
    return None


def _max_abs(ref: list) -> float:
    m = 0.0
    for a in ref:
        v = _f32(a)
        v = v[np.isfinite(v)]
        if v.size:
            m = max(m, float(np.abs(v).max()))
    return m


@dataclass
class PairStats:
    cosine: float  # 0.0 when the candidate holds NaN / Inf where the reference is finite
    nonfinite: int  # candidate NaN / Inf where the reference is finite
    norm_err: float | None = None  # max |c - r| / max |r|, only when the tolerance uses it


def _pair_stats(ref: list, cand: list, want_norm_err: bool = False) -> PairStats:
    """Candidate against reference in float32, one pass: 1 - cosine is taken from the squared difference
    ((|d|^2 - (|r| - |c|)^2) / (2 |r| |c|)), which stays accurate near 1 where r.c / (|r| |c|) in float32 does
    not. A tensor with NaN / Inf where the reference is finite has cosine 0: its finite part says nothing."""
    rr = cc = dd = 0.0
    max_d = max_r = 0.0
    for a, b in zip(ref, cand):
        r, c = _f32(a), _f32(b)
        d = c - r
        rr += float(np.dot(r, r))
        cc += float(np.dot(c, c))
        dd += float(np.dot(d, d))
        if want_norm_err:
            max_d = max(max_d, float(np.abs(d).max()) if d.size else 0.0)
            max_r = max(max_r, float(np.abs(r).max()) if r.size else 0.0)
    if not (np.isfinite(rr) and np.isfinite(cc) and np.isfinite(dd)):
        return _pair_stats_masked(ref, cand, want_norm_err)
    norm_err = (max_d / max_r if max_r else max_d) if want_norm_err else None
    if rr == 0.0 and cc == 0.0:
        return PairStats(1.0, 0, norm_err)
    if rr == 0.0 or cc == 0.0:
        return PairStats(0.0, 0, norm_err)
    nr, nc = np.sqrt(rr), np.sqrt(cc)
    one_minus = max(dd - (nr - nc) ** 2, 0.0) / (2 * nr * nc)
    return PairStats(float(max(1.0 - one_minus, -1.0)), 0, norm_err)


def _pair_stats_masked(ref: list, cand: list, want_norm_err: bool) -> PairStats:
    """The rare case with non-finite values (or squares beyond float32): float64 over the finite reference."""
    r = np.concatenate([np.asarray(a, np.float64).ravel() for a in ref])
    c = np.concatenate([np.asarray(b, np.float64).ravel() for b in cand])
    fin = np.isfinite(r)
    bad = int((fin & ~np.isfinite(c)).sum())
    if bad:
        return PairStats(0.0, bad, float("inf") if want_norm_err else None)
    r, c = r[fin], c[fin]
    d = np.abs(c - r)
    norm_err = None
    if want_norm_err and r.size:
        m = np.abs(r).max()
        norm_err = float(d.max() / m) if m else float(d.max())
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if nr == 0 and nc == 0:
        return PairStats(1.0, 0, norm_err)
    return PairStats(float(np.dot(r, c) / max(nr * nc, 1e-300)), 0, norm_err)


# ---------------------------------------------------------------- the scan


@dataclass
class TensorCheck:
    tensor: str  # in the FP16 graph
    source: str  # the FP32 tensor it holds
    node: str | None  # the FP16 graph's node that produces it (None: an initializer)
    inputs: tuple  # that node's inputs (FP16 graph names)
    float16: bool
    reason: str | None  # overflow | underflow | nonfinite | tolerance | None (within)
    cosine: float  # observed: the FP16 graph's value against the FP32 source
    ref_max_abs: float
    count: int = 0  # values beyond 65504 (overflow), flushed to zero (underflow) or NaN / Inf (nonfinite)
    norm_err: float | None = None


@dataclass
class Scan:
    checks: list = field(default_factory=list)  # TensorCheck, in the FP16 graph's order
    watched: int = 0
    scanned: int = 0  # tensors compared with their FP32 source (integer ones for equality only)
    diverged: int = 0
    unmapped: list = field(default_factory=list)  # float tensors of the FP16 graph with no FP32 source
    subnormals: str = "flush"  # the float16 subnormal model the range was judged with


def _input_values(input_name, x, extra, step) -> dict:
    calls = [x[i : i + step] for i in range(0, len(x), step)]
    vals = {input_name: calls}
    for k, v in (extra or {}).items():
        vals[k] = [np.broadcast_to(v, (len(c), *np.shape(v)[1:])) for c in calls]
    return vals


def scan_fp16(
    model32,
    model16,
    x: np.ndarray,
    input_name: str,
    tol,
    ref_cache: dict | None = None,
    chunk: int = 1500,
    extra_inputs=None,
) -> Scan:
    """Every tensor of the FP16 graph against the FP32 tensor it holds, on the images `x`.

    Large graphs are scanned in chunks of `chunk` tensors in the FP16 graph's (topological) order so memory stays
    bounded; `ref_cache` keeps the FP32 values between calls (the localisation's rounds) when one chunk holds the
    whole graph. Integer tensors that differ (TopK / NMS indices, data-dependent shapes) make everything computed
    from them select different elements: those are marked diverged and only the range is judged."""
    import onnx
    from onnx import numpy_helper

    FLOAT16 = onnx.TensorProto.FLOAT16
    types32, types16 = graph_types(model32), graph_types(model16)
    src = source_map(model32, model16)
    want_norm = getattr(tol, "node_max_norm_err", 1.0) < 1.0
    subnormals = subnormal_model(tol)
    scan = Scan(subnormals=subnormals)
    inits32 = {t.name: t for t in model32.graph.initializer}
    for t in model16.graph.initializer:  # weights: judged from the FP32 file's values, nothing to run
        if t.data_type != FLOAT16:
            continue
        s = src.get(t.name)
        if s is None or s not in inits32:
            scan.unmapped.append(t.name)
            continue
        wrng = _ref_range([numpy_helper.to_array(inits32[s])], subnormals)
        reason = range_reason(wrng, tol)
        cos = wrng.flush_cosine if reason == "underflow_to_zero" else wrng.quant_cosine
        scan.checks.append(
            TensorCheck(t.name, s, None, (), True, reason, cos, wrng.max_abs, wrng.overflow or wrng.flushed)
        )
        scan.scanned += 1
    graph_inputs = {i.name for i in model32.graph.input}
    produced32 = {o for n in model32.graph.node for o in n.output}
    nodes = [n for n in model16.graph.node]
    outs = [(n, o) for n in nodes for o in n.output if o and types16.get(o)]
    scan.watched = len(outs) + len(scan.checks)
    cache = ref_cache if ref_cache is not None and len(outs) <= chunk else {}
    step = images_per_call(model32, input_name, len(x))
    inputs_ref = _input_values(input_name, x, extra_inputs, step)
    diverged: set = set()
    ranges: dict = {}
    for start in range(0, len(outs), chunk):
        part = outs[start : start + chunk]
        mapped = [(n, o, src.get(o)) for n, o in part]
        for _, o, s in mapped:
            if s is None:
                scan.unmapped.append(o)
        need = sorted({s for _, _, s in mapped if s and s in produced32 and s not in cache and types32.get(s)})
        cache.update(run_exposed(model32, need, types32, input_name, x, extra_inputs, step))
        cand = run_exposed(model16, [o for _, o, _ in mapped], types16, input_name, x, extra_inputs, step)
        for n, o, s in mapped:
            if s is None:
                continue
            ref = cache.get(s) if s not in graph_inputs else inputs_ref.get(s)
            if ref is None:
                scan.unmapped.append(o)
                continue
            scan.scanned += 1
            c = cand[o]
            is16 = types16[o] == FLOAT16
            if any(a.shape != b.shape for a, b in zip(ref, c)) or any(i in diverged for i in n.input):
                diverged.add(o)
            if not np.issubdtype(ref[0].dtype, np.floating) or not np.issubdtype(c[0].dtype, np.floating):
                if o not in diverged and not all(np.array_equal(a, b) for a, b in zip(ref, c)):
                    diverged.add(o)
                continue
            reason, count = None, 0
            rng: RefRange | None = None
            if is16:
                rng = ranges.get(s) or ranges.setdefault(s, _ref_range(ref, subnormals))
                reason = range_reason(rng, tol)
                if reason is not None:
                    count = rng.overflow if reason == "overflow" else rng.flushed
            if o in diverged:
                cos, ps = float("nan"), None
            else:
                ps = _pair_stats(ref, c, want_norm)
                cos = ps.cosine
                if reason is None and ps.nonfinite:
                    reason, count = "nonfinite", ps.nonfinite
                elif reason is None and (
                    cos < tol.node_min_cosine or (ps.norm_err is not None and ps.norm_err > tol.node_max_norm_err)
                ):
                    reason = "tolerance"
            # the cheap bound is enough for a tensor within range; a finding states the true maximum
            max_abs = _max_abs(ref) if reason else rng.max_abs if rng is not None else 0.0
            scan.checks.append(
                TensorCheck(
                    o,
                    s,
                    n.name,
                    tuple(n.input),
                    is16,
                    reason,
                    cos,
                    max_abs,
                    count,
                    ps.norm_err if ps is not None else None,
                )
            )
        del cand
    scan.diverged = len(diverged)
    return scan


def range_findings(scan: Scan) -> list:
    """The checks an FP16 device cannot survive: a float16 tensor out of range, or NaN / Inf in the FP16 graph."""
    return [c for c in scan.checks if c.reason in RANGE_REASONS]


def _downstream_of_range(scan: Scan) -> set:
    """Tensors computed (directly or not) from a tensor with a range finding."""
    ranged, after = set(), set()
    for c in scan.checks:
        if any(i in ranged or i in after for i in c.inputs):
            after.add(c.tensor)
        if c.reason in RANGE_REASONS:
            ranged.add(c.tensor)
    return after


def summarise(scan: Scan, limit: int = 5) -> dict:
    """The range check's verdict and reasons, as stored in a report. NaN / Inf that follows an overflow is
    counted, not listed: the overflow is the news."""
    found = range_findings(scan)
    after = _downstream_of_range(scan)
    reasons = []
    for reason, what in (
        ("overflow", "overflow float16 (finite FP32 values beyond 65504: Inf on an FP16 device)"),
        (
            "underflow",
            "lose their values below float16's range (cosine of the float16 rounding below the node tolerance)",
        ),
        (
            "underflow_to_zero",
            "underflow to zero (their values below float16's normal range, "
            "6.1e-05, are flushed to zero on a device that flushes float16 "
            "subnormals: cosine of the flushed rounding below the node "
            "tolerance; fp16_subnormals: flush)",
        ),
        ("nonfinite", "hold NaN / Inf in the FP16 graph where the FP32 reference is finite"),
    ):
        hits = [c for c in found if c.reason == reason]
        if not hits:
            continue
        listed = [c for c in hits if reason != "nonfinite" or c.tensor not in after]
        names = ", ".join(f"{c.tensor} (|ref| max {c.ref_max_abs:.4g}, {c.count} values)" for c in listed[:limit])
        more = f" and {len(listed) - limit} more" if len(listed) > limit else ""
        follow = len(hits) - len(listed)
        tail = f"{': ' + names if names else ''}{more}" + (
            f"{'; ' if names else ': '}{follow} of them downstream of the tensors above" if follow else ""
        )
        reasons.append(f"FP16 range: {len(hits)} tensor(s) {what}{tail}")
    n16 = sum(1 for c in scan.checks if c.float16)
    return {
        "verdict": "fail" if found else "pass",
        "reasons": reasons,
        "float16_tensors": n16,
        "fp16_subnormals": scan.subnormals,
        "tensors": len(scan.checks),
        "diverged": scan.diverged,
        "unmapped": len(scan.unmapped),
        "findings": [
            {
                "tensor": c.tensor,
                "source": c.source,
                "node": c.node,
                "reason": c.reason,
                "count": c.count,
                "ref_max_abs": c.ref_max_abs,
                "downstream": c.tensor in after,
            }
            for c in found
        ],
    }


def load_fp16_graph(
    onnx_path: Path, engine: Path | None = None, block_ops=(), block_nodes=(), workdir: Path | None = None
):
    """(FP32 model, FP16 model): the candidate's own converted graph when it is one (onnxruntime's engine),
    else the ONNX Runtime float16 conversion with the spec's block lists."""
    import tempfile

    import onnx

    from common.runtime.backends.onnxruntime_backend import convert_fp16

    model32 = onnx.load(str(onnx_path))
    if engine is not None:
        return model32, onnx.load(str(engine))
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        out = Path(tmp) / "fp16.onnx"
        convert_fp16(onnx_path, out, block_ops, block_nodes)
        return model32, onnx.load(str(out))


def inputs_digest(x: np.ndarray, extra_inputs=None) -> str:
    """The images' tensor (and any other graph inputs) as one sha256: part of a remembered check's key."""
    import hashlib

    h = hashlib.sha256()
    for name, a in [("", x), *sorted((extra_inputs or {}).items())]:
        a = np.ascontiguousarray(a)
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.data)
    return h.hexdigest()


def range_check(
    onnx_path: Path,
    x: np.ndarray,
    input_name: str,
    tol,
    engine: Path | None = None,
    block_ops=(),
    block_nodes=(),
    extra_inputs=None,
) -> dict:
    """The FP16 range check of a candidate graph on the images `x` (summarise()'s dict)."""
    model32, model16 = load_fp16_graph(onnx_path, engine, block_ops, block_nodes)
    result = summarise(scan_fp16(model32, model16, x, input_name, tol, extra_inputs=extra_inputs))
    result["images"] = int(len(x))
    return result
