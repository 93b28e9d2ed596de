"""Is a candidate engine computing what the FP32 model computes? And if not, where does it go wrong?

compare:   the FP32 reference (ONNX Runtime on the CPU, the ONNX as it is) and a candidate (any backend and
           precision, built by runs.prepare) on the same real images -> per-output tensor errors, detection
           matching and the AP difference, judged against the variant's `fidelity:` tolerances.
localise:  for an ONNX Runtime FP16 candidate, the graph's intermediate tensors are exposed as outputs in both
           graphs and compared in topological order: the first nodes whose FP16 values leave the node tolerance or
           overflow (|x| > 65504) are reported, blocked (kept FP32) and the conversion is checked again.
preflight: a compare on a few images before an accuracy run's full pass, failing in seconds.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import image_items, read_annotations, read_image, resolve_dataset
from .decode import get_decoder
from .engine_cache import atomic_write_bytes
from .errors import EXIT_TARGET_FAILED, ConfigError, InputError, SuiteError
from .evaluate import CocoEvaluator
from .preprocess import Preprocessor
from .specs import Variant

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 6.104e-05   # below it float16 keeps fewer significant bits, and nothing below ~6e-8


class FidelityFailure(SuiteError):
    """The candidate engine's outputs are out of tolerance against the FP32 reference."""

    exit_code = EXIT_TARGET_FAILED


@dataclass(frozen=True)
class Tolerance:
    """Defaults suited to a real FP16 engine on real images (FP16 keeps ~3 decimal digits)."""

    min_cosine: float = 0.999          # per output, flattened
    # per output: max |cand - ref| / max |ref|. A single element decides it, and real FP16 has outliers (RTMDet's
    # raw box distances: 0.10 of the range at cosine 0.99994 with every detection matched), so it only catches
    # gross breakage; cosine and the detection checks carry the precision.
    max_norm_err: float = 0.25
    outputs: tuple | None = None       # outputs whose tensor errors gate the verdict (None: every float output)
    score_threshold: float = 0.3       # reference detections at or above this must be found by the candidate
    min_matched: float = 0.95          # share of those matched (IoU >= 0.5, same label)
    min_mean_iou: float = 0.9
    max_score_diff: float = 0.02       # mean |score diff| of the matched pairs
    max_ap_diff: float = 0.02          # |AP(candidate) - AP(reference)| on the compared images
    # localisation: an intermediate tensor leaves tolerance below this cosine or above this max error (share of
    # its range; 1.0 = off by default: one element of a Sigmoid fed by an FP16 Conv can be 0.3 off harmlessly)
    node_min_cosine: float = 0.999
    node_max_norm_err: float = 1.0


def tolerance_of(variant: Variant) -> Tolerance:
    """The variant's `fidelity:` block over the defaults; every mistake names the spec field."""
    raw = variant.extra.get("fidelity") or {}
    where = f"models/{variant.model} variants.{variant.name}.fidelity"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    known = {f.name for f in dataclasses.fields(Tolerance)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known: {', '.join(sorted(known))}")
    values = {}
    for key, value in raw.items():
        if key == "outputs":
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{where}.outputs: expected a list of output names, got {value!r}")
            values[key] = tuple(value)
        elif key in known:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{where}.{key}: expected a number >= 0, got {value!r}")
            values[key] = float(value)
    return Tolerance(**values)


# ---------------------------------------------------------------- images and engines

@dataclass
class Images:
    image_ids: np.ndarray      # [n]
    inputs: np.ndarray         # [n, 3, H, W] float32
    meta: np.ndarray           # [n, 6]
    annotations: dict


def load_images(variant: Variant, dataset_dir, annotation, images_dir, n: int, items=None,
                annotations=None) -> Images:
    """The first n images (by id) of the dataset, preprocessed as the spec says."""
    if items is None:
        images, ann_file = resolve_dataset(dataset_dir, annotation or variant.annotation, images_dir)
        annotations = read_annotations(ann_file)
        items = image_items(annotations, images, n)
    items = items[:n]
    pre = Preprocessor(variant.preprocess, variant.height, variant.width)
    x = np.empty((len(items), 3, variant.height, variant.width), np.float32)
    meta = np.empty((len(items), 6), np.float64)
    for i, it in enumerate(items):
        _, meta[i] = pre(read_image(it.path), out=x[i])
    return Images(np.array([it.image_id for it in items], np.int64), x, meta, annotations)


def run_images(runner, images: Images, batch: int = 1) -> list[dict]:
    """Per-image outputs, inferred `batch` images per call (a fixed-batch engine pads the last call itself)."""
    from .runs import _infer
    per_image = []
    for s in range(0, len(images.image_ids), batch):
        ids = images.image_ids[s:s + batch]
        out = _infer(runner, images.inputs[s:s + batch], ids)
        if all(v.ndim and v.shape[0] == len(ids) for v in out.values()):
            per_image += [{k: v[i:i + 1] for k, v in out.items()} for i in range(len(ids))]
        else:  # an output without a batch dimension: one image per call
            per_image += [_infer(runner, images.inputs[s + i:s + i + 1], ids[i:i + 1]) for i in range(len(ids))]
    return per_image


def reference_config(cfg):
    """The FP32 reference of a run: ONNX Runtime on the CPU, the ONNX as it is."""
    return dataclasses.replace(cfg, backend="onnxruntime", device="cpu", precision="fp32", batch_size=1,
                               backend_options={}, streams=1)


# ---------------------------------------------------------------- tensor and detection comparison

def tensor_stats(ref: np.ndarray, cand: np.ndarray) -> dict:
    """Errors of cand against ref (same shape), computed in float64 over the finite reference values."""
    r = np.asarray(ref, np.float64).ravel()
    c = np.asarray(cand, np.float64).ravel()
    stats = {"size": int(r.size), "ref_nonfinite": int(r.size - np.isfinite(r).sum()),
             "nan": int(np.isnan(c).sum()), "inf": int(np.isinf(c).sum()),
             "ref_max_abs": float(np.abs(r[np.isfinite(r)]).max()) if np.isfinite(r).any() else 0.0}
    ok = np.isfinite(r) & np.isfinite(c)
    if not ok.any():
        stats.update(max_abs_err=0.0, mean_abs_err=0.0, max_rel_err=0.0, mean_rel_err=0.0, norm_err=0.0,
                     cosine=1.0)
        return stats
    d = np.abs(c[ok] - r[ok])
    # elementwise relative error is unstable next to zero: the floor is a millionth of the output's range
    rel = d / np.maximum(np.abs(r[ok]), 1e-6 * max(stats["ref_max_abs"], 1e-30))
    nr, nc = np.linalg.norm(r[ok]), np.linalg.norm(c[ok])
    cosine = 1.0 if nr == 0 and nc == 0 else float(np.dot(r[ok], c[ok]) / max(nr * nc, 1e-300))
    stats.update(max_abs_err=float(d.max()), mean_abs_err=float(d.mean()), max_rel_err=float(rel.max()),
                 mean_rel_err=float(rel.mean()),
                 norm_err=float(d.max() / stats["ref_max_abs"]) if stats["ref_max_abs"] else float(d.max()),
                 cosine=cosine)
    return stats


def compare_outputs(ref: list[dict], cand: list[dict]) -> dict:
    """{output name: stats} over all images; an integer output reports the share of differing values."""
    report = {}
    for name in ref[0]:
        if any(name not in c for c in cand):
            report[name] = {"error": "missing from the candidate's outputs"}
            continue
        shapes = [(r[name].shape, c[name].shape) for r, c in zip(ref, cand)]
        bad = next(((a, b) for a, b in shapes if a != b), None)
        if bad:
            report[name] = {"error": f"shape {list(bad[1])} != reference {list(bad[0])} (a data-dependent output, "
                                     "e.g. after NMS? list the fixed-shape outputs under fidelity.outputs)"}
            continue
        r = np.concatenate([x[name].ravel() for x in ref])
        c = np.concatenate([x[name].ravel() for x in cand])
        if np.issubdtype(r.dtype, np.floating):
            report[name] = tensor_stats(r, c)
        else:
            report[name] = {"size": int(r.size), "differing": float(np.mean(r != c)) if r.size else 0.0}
    return report


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def match_detections(ref: tuple, cand: tuple, score_threshold: float, iou_min: float = 0.5,
                     score_tol: float | None = None) -> list:
    """Pairs each reference detection at or above the threshold with a candidate detection (any score, or within
    score_tol of the reference's when given) of the same label and IoU >= iou_min, one to one. Pairs are taken globally by increasing (1 - IoU) + |score diff|,
    so among near-identical boxes (DETR queries often overlap) a detection pairs with the one that also agrees
    in score. Returns (iou, |score diff|) or None per reference detection."""
    rb, rs, rl = ref
    cb, cs, cl = cand
    keep = np.where(rs >= score_threshold)[0]
    result: list = [None] * len(keep)
    if not len(keep) or not len(cb):
        return result
    iou = box_iou(rb[keep], cb)
    diff = np.abs(rs[keep][:, None] - cs[None, :])
    feasible = (rl[keep][:, None] == cl[None, :]) & (iou >= iou_min)
    if score_tol is not None:
        feasible &= diff <= score_tol
    k_idx, j_idx = np.nonzero(feasible)
    cost = (1 - iou[k_idx, j_idx]) + diff[k_idx, j_idx]
    used_k, used_j = np.zeros(len(keep), bool), np.zeros(len(cb), bool)
    for t in np.argsort(cost, kind="stable"):
        k, j = k_idx[t], j_idx[t]
        if not used_k[k] and not used_j[j]:
            used_k[k] = used_j[j] = True
            result[k] = (float(iou[k, j]), float(diff[k, j]))
    return result


def _detections(variant: Variant, outputs: list[dict], images: Images) -> list[tuple]:
    decoder = get_decoder(variant.decode_cfg)
    dets = []
    for i, out in enumerate(outputs):
        _, boxes, scores, labels = decoder(out, images.meta[i:i + 1], variant.decode_cfg)
        finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
        dets.append((boxes[finite], scores[finite], labels[finite].astype(np.int64)))
    return dets


def compare_detections(variant: Variant, ref: list[dict], cand: list[dict], images: Images, tol: Tolerance) -> dict:
    rd, cd = _detections(variant, ref, images), _detections(variant, cand, images)
    pairs = [p for r, c in zip(rd, cd) for p in match_detections(r, c, tol.score_threshold)]
    matched = [p for p in pairs if p is not None]
    report = {"reference_detections": len(pairs), "candidate_detections": int(sum(len(c[1]) for c in cd)),
              "score_threshold": tol.score_threshold,
              "matched": 1.0 if not pairs else len(matched) / len(pairs),
              "mean_iou": float(np.mean([m[0] for m in matched])) if matched else (1.0 if not pairs else 0.0),
              "mean_score_diff": float(np.mean([m[1] for m in matched])) if matched else 0.0}
    if images.annotations is not None:
        ap = {}
        for key, dets in (("reference", rd), ("candidate", cd)):
            ev = CocoEvaluator(images.annotations, variant.label_map, variant.categories, "pycocotools")
            for img_id, (b, s, lab) in zip(images.image_ids, dets):
                ev.add(np.full(len(s), img_id), b, s, lab)
            ap[key] = ev.evaluate(images.image_ids)["AP"]
        report.update(ap_reference=ap["reference"], ap_candidate=ap["candidate"],
                      ap_diff=ap["candidate"] - ap["reference"])
    return report


def judge(outputs: dict, detections: dict | None, tol: Tolerance) -> list[str]:
    """Reasons the candidate is out of tolerance (empty: within)."""
    reasons = []
    gated = tol.outputs if tol.outputs is not None else list(outputs)
    for name in gated:
        s = outputs.get(name)
        if s is None:
            reasons.append(f"output '{name}' named in the fidelity tolerances is not an output of the model")
        elif "error" in s:
            reasons.append(f"output '{name}': {s['error']}")
        elif "cosine" in s:
            if s["nan"] or s["inf"]:
                reasons.append(f"output '{name}' has {s['nan']} NaN and {s['inf']} Inf values")
            if s["cosine"] < tol.min_cosine:
                reasons.append(f"output '{name}': cosine similarity {s['cosine']:.6f} < {tol.min_cosine}")
            if s["norm_err"] > tol.max_norm_err:
                reasons.append(f"output '{name}': max abs error {s['max_abs_err']:.4g} is {s['norm_err']:.4f} of its "
                               f"range (max {tol.max_norm_err})")
        elif s.get("differing") and tol.outputs is not None:
            reasons.append(f"output '{name}': {s['differing']:.2%} of the values differ")
    if detections is not None:
        d = detections
        if d["matched"] < tol.min_matched:
            reasons.append(f"only {d['matched']:.1%} of the {d['reference_detections']} reference detections "
                           f"(score >= {tol.score_threshold}) matched (min {tol.min_matched:.0%})")
        if d["mean_iou"] < tol.min_mean_iou:
            reasons.append(f"mean IoU of matched detections {d['mean_iou']:.4f} < {tol.min_mean_iou}")
        if d["mean_score_diff"] > tol.max_score_diff:
            reasons.append(f"mean |score diff| of matched detections {d['mean_score_diff']:.4f} > {tol.max_score_diff}")
        if "ap_diff" in d and abs(d["ap_diff"]) > tol.max_ap_diff:
            reasons.append(f"AP on the compared images {d['ap_candidate']:.4f} vs reference {d['ap_reference']:.4f} "
                           f"(|diff| > {tol.max_ap_diff})")
    return reasons


def compare_runs(variant: Variant, ref: list[dict], cand: list[dict], images: Images, tol: Tolerance) -> dict:
    outputs = compare_outputs(ref, cand)
    try:
        detections = compare_detections(variant, ref, cand, images, tol)
    except InputError as exc:  # outputs the decoder cannot read (a broken candidate): the tensors say why
        detections = {"error": str(exc)}
    reasons = judge(outputs, None if "error" in detections else detections, tol)
    if "error" in detections:
        reasons.append(f"detections: {detections['error']}")
    return {"images": [int(i) for i in images.image_ids], "tolerance": dataclasses.asdict(tol),
            "outputs": outputs, "detections": detections, "verdict": "fail" if reasons else "pass",
            "reasons": reasons}


def format_report(report: dict) -> str:
    lines = [f" {len(report['images'])} image(s); per output: cosine, max|err| (share of range), mean|err|, "
             f"max/mean rel err, NaN/Inf"]
    for name, s in report["outputs"].items():
        if "error" in s:
            lines.append(f"  {name}: {s['error']}")
        elif "cosine" in s:
            lines.append(f"  {name}: cos {s['cosine']:.6f}  max {s['max_abs_err']:.4g} ({s['norm_err']:.4f})  "
                         f"mean {s['mean_abs_err']:.4g}  rel {s['max_rel_err']:.3g}/{s['mean_rel_err']:.3g}  "
                         f"nan {s['nan']} inf {s['inf']}")
        else:
            lines.append(f"  {name}: {s['differing']:.2%} of {s['size']} values differ")
    d = report["detections"]
    if "error" in d:
        lines.append(f"  detections: {d['error']}")
    else:
        line = (f"  detections: {d['matched']:.1%} of {d['reference_detections']} matched (score >= "
                f"{d['score_threshold']}), mean IoU {d['mean_iou']:.4f}, mean |score diff| {d['mean_score_diff']:.4f}")
        if "ap_diff" in d:
            line += f", AP {d['ap_candidate']:.4f} vs {d['ap_reference']:.4f}"
        lines.append(line)
    lines += [f"  FAIL: {r}" for r in report["reasons"]]
    lines.append(f" verdict: {report['verdict'].upper()}")
    return "\n".join(lines)


def write_json(path, data: dict):
    atomic_write_bytes(path, json.dumps(data, indent=1, default=str).encode())


# ---------------------------------------------------------------- the pre-flight of an accuracy run

def preflight(cfg, prepared, items, annotations) -> dict:
    """Compare the accuracy run's engine with the FP32 reference on the first cfg.preflight images; raise
    FidelityFailure (exit 1) when out of tolerance, so a broken engine fails before the full pass."""
    from .runs import prepare
    variant = prepared.variant
    tol = tolerance_of(variant)
    if cfg.precision == "int8":  # INT8 has its own, looser tolerance (common/quantize.py)
        from .quantize import preflight_tolerance
        tol = preflight_tolerance(variant, tol)
    images = load_images(variant, None, None, None, cfg.preflight, items=items, annotations=annotations)
    ref = prepare(reference_config(cfg), variant, prepared.onnx_sha256, prepared.onnx_path)
    report = compare_runs(variant, run_images(ref.runner, images),
                          run_images(prepared.runner, images, cfg.batch_size), images, tol)
    status = "ok" if report["verdict"] == "pass" else "FAIL"
    print(f"preflight: {cfg.backend} {cfg.precision} vs FP32 reference on {len(images.image_ids)} image(s): {status}")
    if report["verdict"] != "pass":
        print(format_report(report))
        raise FidelityFailure("preflight: the engine is out of tolerance against the FP32 reference on "
                              f"{len(images.image_ids)} image(s): " + "; ".join(report["reasons"])
                              + " (see docs/fidelity.md; --preflight 0 skips this check)")
    return report


# ---------------------------------------------------------------- localisation (ONNX Runtime FP16)

def _types(model) -> dict:
    import onnx
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - large or unusual graphs: fall back to what the file declares
        inferred = model
    g = inferred.graph
    return {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.output) + list(g.input)
            if v.type.HasField("tensor_type")}


def _session_with_outputs(model, names: list, types: dict):
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
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess


def _run_exposed(model, names: list, types: dict, input_name: str, x: np.ndarray) -> dict:
    sess = _session_with_outputs(model, names, types)
    values = [sess.run(names, {input_name: x[i:i + 1]}) for i in range(len(x))]
    return {n: [v[k] for v in values] for k, n in enumerate(names)}


@dataclass
class NodeFinding:
    name: str
    op_type: str
    tensor: str
    reason: str          # overflow | underflow (the whole tensor below FP16's normal range) | nonfinite | tolerance
    cosine: float
    norm_err: float
    ref_max_abs: float

    def line(self) -> str:
        return (f"{self.name} ({self.op_type}) -> {self.tensor}: {self.reason}; |ref| max {self.ref_max_abs:.4g}, "
                f"cosine {self.cosine:.6f}, max err {self.norm_err:.4f} of range")


def _tensor_verdict(ref: list, cand: list, tol: Tolerance, held_in_fp16: bool):
    if any(a.shape != b.shape for a, b in zip(ref, cand)):
        return "diverged", None
    r = np.concatenate([a.ravel() for a in ref])
    c = np.concatenate([a.ravel() for a in cand])
    if not np.issubdtype(r.dtype, np.floating):
        # indices, shapes, masks: when they differ, everything downstream selects different elements
        return (None if np.array_equal(r, c) else "diverged"), None
    s = tensor_stats(r, c)
    if held_in_fp16 and s["ref_max_abs"] > FP16_MAX:
        return "overflow", s
    if (~np.isfinite(c) & np.isfinite(r)).any():
        return "nonfinite", s
    if s["cosine"] < tol.node_min_cosine or s["norm_err"] > tol.node_max_norm_err:
        return ("underflow" if held_in_fp16 and 0 < s["ref_max_abs"] < FP16_MIN_NORMAL else "tolerance"), s
    return None, s


def _is_origin(reason: str, cosine: float, bad_inputs: list, worse_by: float = 0.05) -> bool:
    """A bad tensor starts a problem when none of its inputs is bad, when it is the first to overflow or go
    NaN/Inf, or when it is clearly worse than its worst input (a LayerNorm turning slightly-off tiny inputs into
    zeros): a node that only passes its inputs' error on is not a culprit."""
    if not bad_inputs:
        return True
    hard = ("overflow", "nonfinite")
    if reason in hard and not any(r in hard for r, _ in bad_inputs):
        return True
    return cosine < min(c for _, c in bad_inputs) - worse_by


def find_fp16_culprits(onnx_path: Path, x: np.ndarray, input_name: str, tol: Tolerance, block_ops=(),
                       block_nodes=(), chunk: int = 1500, workdir: Path | None = None) -> dict:
    """One localisation pass: the nodes whose FP16 outputs are bad while the inputs they read from other nodes
    are good (or clearly less bad: see _is_origin).

    One forward scan over every tensor, exposed in chunks of `chunk` tensors in topological order: on a small
    graph that is a single run of each graph exposing every tensor (the cheapest there is), on a large one memory
    stays bounded by the chunk. It is not a bisection: a bisection tests one cut at a time and finds one
    culprit, assuming errors only grow downstream; FP16 problems are often several independent ones (a
    harmless underflow early, a broken score head late) and a later one can hide behind an earlier one, so the
    scan judges every node against its own inputs and reports all of them in one pass.
    Tensors computed from integer tensors that differ (TopK / NMS indices, data-dependent shapes) select
    different elements in the two graphs: they are marked diverged and not judged elementwise.
    """
    import onnx
    from .backends.onnxruntime_backend import convert_fp16

    model32 = onnx.load(str(onnx_path))
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        fp16_path = Path(tmp) / "fp16.onnx"
        convert_fp16(onnx_path, fp16_path, block_ops, block_nodes)
        model16 = onnx.load(str(fp16_path))
    types32, types16 = _types(model32), _types(model16)
    produced16 = {o for n in model16.graph.node for o in n.output}
    from onnxruntime.transformers import float16
    from .backends.onnxruntime_backend import FP16_ALWAYS_FP32
    ops = set(block_ops) | set(FP16_ALWAYS_FP32) | set(float16.DEFAULT_OP_BLOCK_LIST)
    blocked = {n.name for n in model32.graph.node if n.name in set(block_nodes) or n.op_type in ops}
    # (node, tensor in the FP32 graph, tensor holding the value the node computed in the FP16 graph)
    watch = []
    for node in model32.graph.node:
        for out in node.output:
            if not out or not types32.get(out):
                continue
            # a blocked node computes in FP32 under a renamed output; its old name then holds the FP16 cast
            alt = out + "_cast_to_fp16"
            name16 = alt if node.name in blocked and alt in produced16 else out
            if name16 in produced16 and types16.get(name16):
                watch.append((node, out, name16))
    bad: dict = {}        # tensor -> (reason, cosine)
    diverged: set = set()
    findings: list[NodeFinding] = []
    scanned = 0
    for start in range(0, len(watch), chunk):
        part = watch[start:start + chunk]
        ref = _run_exposed(model32, [w[1] for w in part], types32, input_name, x)
        cand = _run_exposed(model16, [w[2] for w in part], types16, input_name, x)
        for node, out, name16 in part:
            scanned += 1
            if any(i in diverged for i in node.input):
                diverged.add(out)
                continue
            reason, s = _tensor_verdict(ref[out], cand[name16], tol, held_in_fp16=node.name not in blocked)
            if reason is None:
                continue
            if reason == "diverged":
                diverged.add(out)
                continue
            bad[out] = (reason, s["cosine"])
            if _is_origin(reason, s["cosine"], [bad[i] for i in node.input if i in bad]):
                findings.append(NodeFinding(node.name, node.op_type, out, reason, s["cosine"], s["norm_err"],
                                            s["ref_max_abs"]))
        del ref, cand
    consumers: dict = {}
    for node in model32.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node.name)
    # A value outside the FP16 range must also be read in FP32: its readers join the block list.
    to_block = []
    for f in findings:
        to_block.append(f.name)
        if f.reason in ("overflow", "underflow"):
            to_block += consumers.get(f.tensor, [])
    return {"watched": len(watch), "scanned": scanned, "diverged": len(diverged), "findings": findings,
            "to_block": list(dict.fromkeys(n for n in to_block if n))}


def localise(onnx_path: Path, x: np.ndarray, input_name: str, tol: Tolerance, block_ops=(), block_nodes=(),
             max_rounds: int = 6, workdir: Path | None = None, log=print) -> dict:
    """Rounds of find_fp16_culprits, each blocking what the last one found, until no node leaves tolerance.
    Returns the first round's culprits (where FP16 first goes wrong) and the block list that fixes it."""
    blocked = list(block_nodes)
    rounds = []
    for k in range(max_rounds):
        res = find_fp16_culprits(onnx_path, x, input_name, tol, block_ops, blocked, workdir=workdir)
        rounds.append({"blocked_before": list(blocked), "scanned": res["scanned"], "watched": res["watched"],
                       "findings": [dataclasses.asdict(f) for f in res["findings"]]})
        for f in res["findings"]:
            log(f"  round {k + 1}: {f.line()}")
        new = [n for n in res["to_block"] if n not in blocked]
        if not res["findings"] or not new:
            break
        blocked += new
    first = rounds[0]["findings"]
    clean = not rounds[-1]["findings"]
    return {"first_nodes": first, "rounds": rounds, "block_nodes": blocked, "added": blocked[len(block_nodes):],
            "clean": clean}


def block_list_yaml(variant: Variant, nodes: list) -> str:
    """The `build:` snippet to put under the variant in the model's spec."""
    import yaml
    build = dict(variant.extra.get("build") or {})
    build["fp16_block_nodes"] = list(nodes)
    return yaml.safe_dump({"build": build}, sort_keys=False, default_flow_style=False)


def with_block_nodes(variant: Variant, nodes: list) -> Variant:
    extra = dict(variant.extra)
    extra["build"] = {**dict(extra.get("build") or {}), "fp16_block_nodes": list(nodes)}
    return dataclasses.replace(variant, extra=extra)


# ---------------------------------------------------------------- the compare command

def run_compare(cfg, num_images: int, localise_images: int = 1, fix: bool = True, out_dir: Path | None = None,
                always_localise: bool = False, log=print) -> dict:
    """Reference vs candidate on real images; when out of tolerance and the candidate is an ONNX Runtime FP16
    engine, localise, build the conversion with the found nodes blocked and compare it again."""
    from .engine_cache import file_sha256
    from .runs import prepare, resolve_onnx
    from .specs import load_model

    variant = load_model(cfg.model).variant(cfg.variant)
    tol = tolerance_of(variant)
    onnx_path = resolve_onnx(cfg, variant)
    sha = file_sha256(onnx_path)
    images = load_images(variant, cfg.dataset_dir, cfg.annotation, cfg.images_dir, num_images)
    ref = run_images(prepare(reference_config(cfg), variant, sha, onnx_path).runner, images)
    cand_p = prepare(cfg, variant, sha, onnx_path)
    report = compare_runs(variant, ref, run_images(cand_p.runner, images), images, tol)
    report.update(model=variant.model, variant=variant.name, onnx=str(onnx_path), onnx_sha256=sha,
                  candidate={"backend": cand_p.backend.name, "device": cand_p.backend.device(),
                             "precision": cfg.precision, "engine": str(cand_p.engine)})
    log(f"== {variant.id}: {cand_p.backend.name} {cand_p.backend.device()} {cfg.precision} vs FP32 reference ==")
    log(format_report(report))
    localisable = cfg.backend == "onnxruntime" and cfg.precision == "fp16"
    if (report["verdict"] == "fail" and fix or always_localise) and localisable:
        build = variant.extra.get("build") or {}
        log(f"localising on {min(localise_images, len(images.image_ids))} image(s): first nodes whose FP16 values "
            f"leave tolerance (cosine < {tol.node_min_cosine} or max err > {tol.node_max_norm_err} of range) "
            f"or overflow (|x| > {FP16_MAX:g})")
        loc = localise(onnx_path, images.inputs[:localise_images], variant.input_name, tol,
                       tuple(build.get("fp16_block_ops", ())), tuple(build.get("fp16_block_nodes", ())),
                       log=log)
        report["localisation"] = loc
        if not loc["clean"]:
            log(f"after {len(loc['rounds'])} rounds some nodes still leave tolerance: the block list below is partial")
        if loc["added"]:
            fixed_variant = with_block_nodes(variant, loc["block_nodes"])
            fixed_p = prepare(cfg, fixed_variant, sha, onnx_path)
            fixed = compare_runs(fixed_variant, ref, run_images(fixed_p.runner, images), images, tol)
            snippet = block_list_yaml(variant, loc["block_nodes"])
            report["fix"] = {"block_nodes": loc["block_nodes"], "engine": str(fixed_p.engine),
                             "verdict": fixed["verdict"], "reasons": fixed["reasons"], "outputs": fixed["outputs"],
                             "detections": fixed["detections"], "spec_snippet": snippet}
            log(f"FP16 conversion with {len(loc['block_nodes'])} node(s) kept in FP32, compared again:")
            log(format_report(fixed))
            log("put this under the variant in the model's spec (models/<name>/model.yaml):")
            log("    " + snippet.rstrip().replace("\n", "\n    "))
            if out_dir is not None:
                atomic_write_bytes(Path(out_dir) / "fp16_block_nodes.yaml", snippet.encode())
        else:
            log("localisation found no node to keep in FP32" if not loc["first_nodes"] else
                "the nodes found are already blocked: blocking cannot fix this candidate")
    return report
