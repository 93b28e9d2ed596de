"""Is a candidate engine computing what the FP32 model computes? And if not, where does it go wrong?

compare:   the FP32 reference (ONNX Runtime on the CPU, the ONNX as it is) and a candidate (any backend and
           precision, built by engine.prepare) on the same real images -> per-output tensor errors, detection
           matching and the AP difference, judged against the variant's `fidelity:` tolerances.
localise:  for an ONNX Runtime FP16 candidate, the graph's intermediate tensors are exposed as outputs in both
           graphs and compared in topological order: the first nodes whose FP16 values leave the node tolerance or
           overflow (|x| > 65504) are reported, blocked (kept FP32) and the conversion is checked again.
preflight: a compare on a few images before an accuracy run's full pass, failing in seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.compare.comparator import Comparison, box_iou, compare, match_detections  # noqa: F401 - box_iou re-exported

# the FP16 range check and the localisation live in their own modules (neither imports this one)
from common.compare.fp16_localise import NodeFinding, find_fp16_culprits, localise  # noqa: F401 - re-exported
from common.compare.fp16_range import FP16_MAX, FP16_MIN_NORMAL, RANGE_CHECK, inputs_digest, range_check  # noqa: F401
from common.config.specs import Variant
from common.data.coco import image_items, read_annotations, read_image, resolve_dataset
from common.data.preprocess import Preprocessor
from common.decode.outputs import get_decoder
from common.engine_cache import atomic_write_bytes, atomic_write_json
from common.errors import EXIT_TARGET_FAILED, InputError, SuiteError
from common.evaluate.metrics import CocoEvaluator
from common.record.types import built, check_compare_report
from common.tolerances import Tolerance  # noqa: F401 - re-exported


class FidelityFailure(SuiteError):
    """The candidate engine's outputs are out of tolerance against the FP32 reference."""

    exit_code = EXIT_TARGET_FAILED
    report: dict | None = None  # the comparison that failed, when a preflight raised it


def tolerance_of(variant: Variant) -> Tolerance:
    """The variant's `fidelity:` section, typed and validated when the spec was loaded (common/tolerances.py)."""
    return variant.fidelity


def with_subnormals(tol: Tolerance, backend) -> Tolerance:
    """`tol` with the FP16 range check's subnormal model resolved: the spec's, else the backend's declared one."""
    if tol.fp16_subnormals:
        return tol
    return dataclasses.replace(tol, fp16_subnormals=backend.capabilities.fp16_subnormals)


def subnormals_note(tol: Tolerance, variant: Variant) -> str:
    """Which float16 subnormal model the range check used, and where it came from, for the output."""
    source = (
        "the spec's fidelity.fp16_subnormals" if variant.fidelity.fp16_subnormals else "the backend's declared default"
    )
    return f"float16 subnormals: {tol.fp16_subnormals} ({source})"


# ---------------------------------------------------------------- images and engines


@dataclass
class Images:
    image_ids: np.ndarray  # [n]
    inputs: np.ndarray  # [n, 3, H, W] float32
    meta: np.ndarray  # [n, 6]
    annotations: dict


def load_images(
    variant: Variant,
    dataset_dir,
    annotation,
    images_dir,
    n: int,
    items=None,
    annotations=None,
    shard: str | None = None,
) -> Images:
    """The first n images (by id) of the dataset, or of its image shard "K/N" (common/harness/shards.py),
    preprocessed as the spec says."""
    if items is None:
        images, ann_file = resolve_dataset(dataset_dir, annotation or variant.annotation, images_dir)
        annotations = read_annotations(ann_file)
        items = image_items(annotations, images, None if shard else n)
        if shard:
            from common.config.options import parse_shard
            from common.harness.shards import shard_bounds

            k, total = parse_shard(shard)
            start, stop = shard_bounds(len(items), k, total)
            if stop == start:
                raise InputError(f"image shard {shard} of {len(items)} images holds no image", ann_file)
            items = items[start:stop]
    items = items[:n]
    pre = Preprocessor(variant.preprocess, variant.height, variant.width)
    x = np.empty((len(items), 3, variant.height, variant.width), np.float32)
    meta = np.empty((len(items), 6), np.float64)
    for i, it in enumerate(items):
        _, meta[i] = pre(read_image(it.path), out=x[i])
    return Images(np.array([it.image_id for it in items], np.int64), x, meta, annotations)


def run_images(runner, images: Images, batch: int = 1) -> list[dict]:
    """Per-image outputs, inferred `batch` images per call (a fixed-batch engine pads the last call itself)."""
    from common.harness.engine import infer as _infer

    per_image = []
    for s in range(0, len(images.image_ids), batch):
        ids = images.image_ids[s : s + batch]
        out = _infer(runner, images.inputs[s : s + batch], ids)
        if all(v.ndim and v.shape[0] == len(ids) for v in out.values()):
            per_image += [{k: v[i : i + 1] for k, v in out.items()} for i in range(len(ids))]
        else:  # an output without a batch dimension: one image per call
            per_image += [_infer(runner, images.inputs[s + i : s + i + 1], ids[i : i + 1]) for i in range(len(ids))]
    return per_image


def reference_config(cfg):
    """The FP32 reference of a run: the backend whose capabilities say it is the reference, on its first device,
    running the ONNX as it is."""
    from common.runtime.backends import reference_backend

    cls = reference_backend()
    return dataclasses.replace(
        cfg,
        backend=cls.name,
        device=cls.capabilities.devices[0],
        precision="fp32",
        batch_size=1,
        backend_options={},
        streams=1,
    )


# ---------------------------------------------------------------- tensor and detection comparison


def tensor_stats(ref: np.ndarray, cand: np.ndarray) -> dict:
    """Errors of cand against ref (same shape), computed in float64 over the values finite in both (a handful of
    outputs, so float64 costs nothing here); cosine is 0 when cand holds NaN / Inf where ref is finite."""
    r = np.asarray(ref, np.float64).ravel()
    c = np.asarray(cand, np.float64).ravel()
    stats = {
        "size": int(r.size),
        "ref_nonfinite": int(r.size - np.isfinite(r).sum()),
        "nan": int(np.isnan(c).sum()),
        "inf": int(np.isinf(c).sum()),
        "ref_max_abs": float(np.abs(r[np.isfinite(r)]).max()) if np.isfinite(r).any() else 0.0,
    }
    ok = np.isfinite(r) & np.isfinite(c)
    if not ok.any():
        stats.update(max_abs_err=0.0, mean_abs_err=0.0, max_rel_err=0.0, mean_rel_err=0.0, norm_err=0.0, cosine=1.0)
        return stats
    d = np.abs(c[ok] - r[ok])
    # elementwise relative error is unstable next to zero: the floor is a millionth of the output's range
    rel = d / np.maximum(np.abs(r[ok]), 1e-6 * max(stats["ref_max_abs"], 1e-30))
    nr, nc = np.linalg.norm(r[ok]), np.linalg.norm(c[ok])
    cosine = 1.0 if nr == 0 and nc == 0 else float(np.dot(r[ok], c[ok]) / max(nr * nc, 1e-300))
    if (np.isfinite(r) & ~np.isfinite(c)).any():
        cosine = 0.0  # NaN / Inf where the reference is finite: the finite part says nothing about the tensor
    stats.update(
        max_abs_err=float(d.max()),
        mean_abs_err=float(d.mean()),
        max_rel_err=float(rel.max()),
        mean_rel_err=float(rel.mean()),
        norm_err=float(d.max() / stats["ref_max_abs"]) if stats["ref_max_abs"] else float(d.max()),
        cosine=cosine,
    )
    return stats


def compare_outputs(ref: list[dict], cand: list[dict]) -> dict:
    """{output name: stats} over all images; an integer output reports the share of differing values."""
    report: dict[str, dict] = {}
    for name in ref[0]:
        if any(name not in c for c in cand):
            report[name] = {"error": "missing from the candidate's outputs"}
            continue
        shapes = [(r[name].shape, c[name].shape) for r, c in zip(ref, cand)]
        bad = next(((a, b) for a, b in shapes if a != b), None)
        if bad:
            report[name] = {
                "error": f"shape {list(bad[1])} != reference {list(bad[0])} (a data-dependent output, "
                "e.g. after NMS? list the fixed-shape outputs under fidelity.outputs)"
            }
            continue
        r = np.concatenate([x[name].ravel() for x in ref])
        c = np.concatenate([x[name].ravel() for x in cand])
        if np.issubdtype(r.dtype, np.floating):
            report[name] = tensor_stats(r, c)
        else:
            report[name] = {"size": int(r.size), "differing": float(np.mean(r != c)) if r.size else 0.0}
    return report


def _detections(variant: Variant, outputs: list[dict], images: Images) -> list[tuple]:
    decoder = get_decoder(variant.decode_cfg)
    dets = []
    for i, out in enumerate(outputs):
        _, boxes, scores, labels = decoder(out, images.meta[i : i + 1], variant.decode_cfg)
        finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
        dets.append((boxes[finite], scores[finite], labels[finite].astype(np.int64)))
    return dets


def compare_detections(variant: Variant, ref: list[dict], cand: list[dict], images: Images, tol: Tolerance) -> dict:
    rd, cd = _detections(variant, ref, images), _detections(variant, cand, images)
    pairs = [p for r, c in zip(rd, cd) for p in match_detections(r, c, tol.score_threshold)]
    matched = [p for p in pairs if p is not None]
    report: dict[str, object] = {
        "reference_detections": len(pairs),
        "candidate_detections": int(sum(len(c[1]) for c in cd)),
        "score_threshold": tol.score_threshold,
        "matched": 1.0 if not pairs else len(matched) / len(pairs),
        "mean_iou": float(np.mean([m[0] for m in matched])) if matched else (1.0 if not pairs else 0.0),
        "mean_score_diff": float(np.mean([m[1] for m in matched])) if matched else 0.0,
    }
    if images.annotations is not None:
        from common.evaluate.bootstrap import MatchTable, paired_interval

        ap, tables = {}, {}
        for key, dets in (("reference", rd), ("candidate", cd)):
            ev = CocoEvaluator(images.annotations, variant.label_map, variant.categories, "pycocotools")
            for img_id, (b, s, lab) in zip(images.image_ids, dets):
                ev.add(np.full(len(s), img_id), b, s, lab)
            ap[key] = ev.evaluate(images.image_ids)["AP"]
            tables[key] = MatchTable.from_evaluator(ev, images.image_ids)
        report.update(
            ap_reference=ap["reference"], ap_candidate=ap["candidate"], ap_diff=ap["candidate"] - ap["reference"]
        )
        # the evidence of these few images: the paired bootstrap interval of the difference (common/ci/paired.py)
        paired = paired_interval(tables["candidate"], tables["reference"], metrics=("AP",))
        report["ap_diff_interval"] = paired["diff"]["AP"]
        # each image's detections at or above the threshold, COCO ids, original pixels: the HTML report draws them
        label_map = np.asarray(variant.label_map)
        report["per_image"] = [
            {
                "image_id": int(i),
                **{
                    key: [
                        [*map(float, b), float(s), int(label_map[lab])]
                        for b, s, lab in zip(*d)
                        if s >= tol.score_threshold
                    ]
                    for key, d in (("reference", r), ("candidate", c))
                },
            }
            for i, r, c in zip(images.image_ids, rd, cd)
        ]
        report["ap_diff_method"] = f"{paired['method']}, {paired['resamples']} resamples, level {paired['level']}"
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
                reasons.append(
                    f"output '{name}': max abs error {s['max_abs_err']:.4g} is {s['norm_err']:.4f} of its "
                    f"range (max {tol.max_norm_err})"
                )
        elif s.get("differing") and tol.outputs is not None:
            reasons.append(f"output '{name}': {s['differing']:.2%} of the values differ")
    if detections is not None:
        d = detections
        if d["matched"] < tol.min_matched:
            reasons.append(
                f"only {d['matched']:.1%} of the {d['reference_detections']} reference detections "
                f"(score >= {tol.score_threshold}) matched (min {tol.min_matched:.0%})"
            )
        if d["mean_iou"] < tol.min_mean_iou:
            reasons.append(f"mean IoU of matched detections {d['mean_iou']:.4f} < {tol.min_mean_iou}")
        if d["mean_score_diff"] > tol.max_score_diff:
            reasons.append(f"mean |score diff| of matched detections {d['mean_score_diff']:.4f} > {tol.max_score_diff}")
        if "ap_diff" in d and abs(d["ap_diff"]) > tol.max_ap_diff:
            lo, hi = d.get("ap_diff_interval") or (d["ap_diff"], d["ap_diff"])
            # with the paired interval: only a difference the images show (the interval excludes 0) counts
            if lo > 0 or hi < 0 or "ap_diff_interval" not in d:
                reasons.append(
                    f"AP on the compared images {d['ap_candidate']:.4f} vs reference "
                    f"{d['ap_reference']:.4f} (|diff| > {tol.max_ap_diff}"
                    + (f", 95 % paired interval [{lo:+.4f}, {hi:+.4f}] excludes 0)" if "ap_diff_interval" in d else ")")
                )
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
    return {
        "images": [int(i) for i in images.image_ids],
        "tolerance": dataclasses.asdict(tol),
        "outputs": outputs,
        "detections": detections,
        "verdict": "fail" if reasons else "pass",
        "reasons": reasons,
    }


def fidelity_check(variant: Variant, images: Images, tol: Tolerance):
    """The compare function of a candidate against the FP32 reference, for comparator.compare: per-image outputs
    of both -> tensors and detections judged within `tol` (the report is the Comparison's details)."""

    def judge(ref: list[dict], cand: list[dict]) -> Comparison:
        report = compare_runs(variant, ref, cand, images, tol)
        return Comparison(report["verdict"] == "pass", report, report["reasons"])

    return judge


def against_reference(
    variant: Variant,
    images: Images,
    tol: Tolerance,
    ref_runner,
    cand_runner,
    batch: int = 1,
    ref_outputs: list | None = None,
) -> dict:
    """Both runners on the same images through the comparator; the candidate's report."""
    results = {
        "reference": ref_outputs if ref_outputs is not None else run_images(ref_runner, images),
        "candidate": run_images(cand_runner, images, batch),
    }
    return compare(results, fidelity_check(variant, images, tol))["candidate"].details


def format_report(report: dict) -> str:
    lines = [
        f" {len(report['images'])} image(s); per output: cosine, max|err| (share of range), mean|err|, "
        f"max/mean rel err, NaN/Inf"
    ]
    gated = report["tolerance"].get("outputs")  # None: every output is judged
    for name, s in report["outputs"].items():
        if gated is not None and name not in gated and "error" in s:
            # the spec judges this output by its detections only: a shape difference is expected, not a fault
            lines.append(f"  {name}: not judged as a tensor (not in fidelity.outputs): {s['error'].split(' (')[0]}")
        elif "error" in s:
            lines.append(f"  {name}: {s['error']}")
        elif "cosine" in s:
            lines.append(
                f"  {name}: cos {s['cosine']:.6f}  max {s['max_abs_err']:.4g} ({s['norm_err']:.4f})  "
                f"mean {s['mean_abs_err']:.4g}  rel {s['max_rel_err']:.3g}/{s['mean_rel_err']:.3g}  "
                f"nan {s['nan']} inf {s['inf']}"
            )
        else:
            lines.append(f"  {name}: {s['differing']:.2%} of {s['size']} values differ")
    d = report["detections"]
    if "error" in d:
        lines.append(f"  detections: {d['error']}")
    else:
        line = (
            f"  detections: {d['matched']:.1%} of {d['reference_detections']} matched (score >= "
            f"{d['score_threshold']}), mean IoU {d['mean_iou']:.4f}, mean |score diff| {d['mean_score_diff']:.4f}"
        )
        if "ap_diff" in d:
            line += f", AP {d['ap_candidate']:.4f} vs {d['ap_reference']:.4f}"
            if "ap_diff_interval" in d:
                line += (
                    f" (diff 95 % paired interval [{d['ap_diff_interval'][0]:+.4f}, {d['ap_diff_interval'][1]:+.4f}])"
                )
        lines.append(line)
    lines += [f"  FAIL: {r}" for r in report["reasons"]]
    lines.append(f" verdict: {report['verdict'].upper()}")
    return "\n".join(lines)


def write_json(path, data: dict):
    """Write a compare report atomically: a killed run never leaves half a report."""
    atomic_write_json(path, data, indent=1)


# ---------------------------------------------------------------- the pre-flight of an accuracy run


def add_fp16_range(report: dict, cfg, prepared, ref_prepared, x: np.ndarray, tol: Tolerance, log=print) -> None:
    """For an FP16 candidate: the FP16 range check (common/compare/fp16_range.py) of its graph on the images `x`, stored
    under `fp16_range`; a failure fails the report. The CPU's FP16 outputs can be perfect while the graph
    overflows on a device, so this, not the outputs, is what says the FP16 graph is sound."""
    if cfg.precision != "fp16":
        return
    variant = prepared.variant
    tol = with_subnormals(tol, prepared.backend)
    build = variant.extra.get("build") or {}
    own = prepared.backend.capabilities.fp16_onnx
    log(f"fp16 on {prepared.backend.name} {prepared.backend.device()}: {prepared.backend.precision_note('fp16')}")
    block_ops, block_nodes = tuple(build.get("fp16_block_ops", ())), tuple(build.get("fp16_block_nodes", ()))
    extra = ref_prepared.runner.extra_feeds(1)
    result, remembered = prepared.request.cache.remembered(
        "fp16-range",
        _range_check_key(cfg, prepared, own, block_ops, block_nodes, x, extra, tol),
        lambda: range_check(
            prepared.onnx_path,
            x,
            variant.input_name,
            tol,
            prepared.engine if own else None,
            block_ops,
            block_nodes,
            extra_inputs=extra,
        ),
    )
    result["graph"] = "the candidate engine" if own else "the ONNX Runtime float16 conversion (stand-in)"
    result["remembered"] = remembered
    result["subnormals_note"] = subnormals_note(tol, variant)
    report["fp16_range"] = result
    log(
        f" FP16 range check on {result['images']} image(s), {result['float16_tensors']} float16 tensor(s) of "
        f"{result['graph']}, {result['subnormals_note']}: {result['verdict'].upper()}"
        f"{' (remembered)' if remembered else ''}"
    )
    if result["verdict"] != "pass":
        report["verdict"] = "fail"
        report["reasons"] = list(report["reasons"]) + result["reasons"]


def _range_check_key(cfg, prepared, own: bool, block_ops, block_nodes, x, extra, tol) -> str:
    """Everything the range check's answer depends on: the FP32 ONNX, the FP16 graph (the engine's own bytes, or
    the float16 conversion's settings and version), the images, the node tolerances, the check's and the ONNX
    Runtime's versions (it runs both graphs there). The same FP16 graph is judged once, not by every case of a
    matrix (each batch size, each repeat)."""
    import onnxruntime as ort

    from common.engine_cache import cache_key, file_sha256_memo
    from common.harness.engine import sha256_memo_dir
    from common.runtime.backends.onnxruntime_backend import FP16_CONVERTER

    graph = (
        {"engine": file_sha256_memo(prepared.engine, sha256_memo_dir(cfg))}
        if own
        else {"block_ops": block_ops, "block_nodes": block_nodes, "converter": FP16_CONVERTER}
    )
    return cache_key(
        prepared.onnx_sha256,
        check=RANGE_CHECK,
        runtime=ort.__version__,
        **graph,
        inputs=inputs_digest(x, extra),
        node_tol=[tol.node_min_cosine, tol.node_max_norm_err],
        subnormals=tol.fp16_subnormals,
    )


def preflight(cfg, prepared, items, annotations) -> dict:
    """Compare the accuracy run's engine with the FP32 reference on the first cfg.preflight images (and, for FP16,
    range-check its graph); raise FidelityFailure (exit 1, carrying the report) when out of tolerance, so a broken
    engine fails before the full pass."""
    from common.harness.engine import prepare

    variant = prepared.variant
    tol = tolerance_of(variant)
    if cfg.precision == "int8":  # INT8 has its own, looser tolerance (common/runtime/quantize.py)
        from common.runtime.quantize import preflight_tolerance

        tol = preflight_tolerance(variant, tol)
    images = load_images(variant, None, None, None, cfg.preflight, items=items, annotations=annotations)
    ref = prepare(reference_config(cfg), variant, prepared.onnx_sha256, prepared.onnx_path)
    report = against_reference(variant, images, tol, ref.runner, prepared.runner, cfg.batch_size)
    add_fp16_range(report, cfg, prepared, ref, images.inputs, tol, log=lambda *_: None)
    status = "ok" if report["verdict"] == "pass" else "FAIL"
    print(f"preflight: {cfg.backend} {cfg.precision} vs FP32 reference on {len(images.image_ids)} image(s): {status}")
    if "fp16_range" in report:
        r = report["fp16_range"]
        print(
            f" fp16 on {prepared.backend.name} {prepared.backend.device()}: {prepared.backend.precision_note('fp16')}"
        )
        print(
            f" FP16 range check: {r['float16_tensors']} float16 tensor(s) of {r['graph']}, {r['subnormals_note']}: "
            f"{r['verdict'].upper()}"
            + (" (remembered: the same graph, images and tolerances were judged before)" if r["remembered"] else "")
        )
    if report["verdict"] != "pass":
        print(format_report(report))
        exc = FidelityFailure(
            "preflight: the engine is out of tolerance against the FP32 reference on "
            f"{len(images.image_ids)} image(s): "
            + "; ".join(report["reasons"])
            + " (see docs/fidelity.md; --preflight 0 skips this check)"
        )
        exc.report = report
        raise exc
    return report


# ---------------------------------------------------------------- localisation: common/compare/fp16_localise.py


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


def run_compare(
    cfg,
    num_images: int,
    localise_images: int = 4,
    fix: bool = True,
    out_dir: Path | None = None,
    always_localise: bool = False,
    log=print,
    range_images: int = 4,
) -> dict:
    """Reference vs candidate on real images, plus the FP16 range check of an FP16 candidate's graph on the first
    `range_images`; when out of tolerance and the candidate is an ONNX Runtime FP16 engine, localise, build the
    conversion with the found nodes blocked and compare (and range-check) it again."""
    from common.config.specs import load_model
    from common.engine_cache import file_sha256
    from common.harness.engine import prepare, resolve_onnx

    variant = load_model(cfg.model).variant(cfg.variant)
    tol = tolerance_of(variant)
    onnx_path = resolve_onnx(cfg, variant)
    sha = file_sha256(onnx_path)
    images = load_images(variant, cfg.dataset_dir, cfg.annotation, cfg.images_dir, num_images, shard=cfg.shard)
    if cfg.shard:
        log(f"shard {cfg.shard} (from {cfg.shard_source}): the first {len(images.image_ids)} images of that shard")
    ref_p = prepare(reference_config(cfg), variant, sha, onnx_path)
    ref = run_images(ref_p.runner, images)
    cand_p = prepare(cfg, variant, sha, onnx_path)
    report = against_reference(variant, images, tol, ref_p.runner, cand_p.runner, ref_outputs=ref)
    if cfg.shard:
        report["shard"] = {
            "shard": cfg.shard,
            "source": cfg.shard_source,
            "image_ids": [int(i) for i in images.image_ids],
        }
    log(f"== {variant.id}: {cand_p.backend.name} {cand_p.backend.device()} {cfg.precision} vs FP32 reference ==")
    add_fp16_range(report, cfg, cand_p, ref_p, images.inputs[:range_images], tol, log)
    report.update(
        model=variant.model,
        variant=variant.name,
        onnx=str(onnx_path),
        onnx_sha256=sha,
        candidate={
            "backend": cand_p.backend.name,
            "device": cand_p.backend.device(),
            "precision": cfg.precision,
            "engine": str(cand_p.engine),
        },
    )
    log(format_report(report))
    localisable = cand_p.backend.capabilities.fp16_onnx and cfg.precision == "fp16"
    if (report["verdict"] == "fail" and fix or always_localise) and localisable:
        build = variant.extra.get("build") or {}
        log(
            f"localising on {min(localise_images, len(images.image_ids))} image(s): the nodes where FP16 starts to "
            f"go wrong (a float16 tensor beyond {FP16_MAX:g} or below float16's range, NaN / Inf, or cosine < "
            f"{tol.node_min_cosine}) and the nodes to keep in FP32, round by round until none is left"
        )
        loc = localise(
            onnx_path,
            images.inputs[:localise_images],
            variant.input_name,
            with_subnormals(tol, cand_p.backend),
            tuple(build.get("fp16_block_ops", ())),
            tuple(build.get("fp16_block_nodes", ())),
            log=log,
            extra_inputs=ref_p.runner.extra_feeds(1),
        )
        report["localisation"] = loc
        if not loc["clean"]:
            log(f"after {len(loc['rounds'])} rounds some nodes still leave tolerance: the block list below is partial")
        if loc["added"]:
            fixed_variant = with_block_nodes(variant, loc["block_nodes"])
            fixed_p = prepare(cfg, fixed_variant, sha, onnx_path)
            fixed = against_reference(fixed_variant, images, tol, ref_p.runner, fixed_p.runner, ref_outputs=ref)
            add_fp16_range(fixed, cfg, fixed_p, ref_p, images.inputs[:range_images], tol, log=lambda *_: None)
            snippet = block_list_yaml(variant, loc["block_nodes"])
            report["fix"] = {
                "block_nodes": loc["block_nodes"],
                "engine": str(fixed_p.engine),
                "verdict": fixed["verdict"],
                "reasons": fixed["reasons"],
                "outputs": fixed["outputs"],
                "detections": fixed["detections"],
                "fp16_range": fixed.get("fp16_range"),
                "spec_snippet": snippet,
            }
            log(f"FP16 conversion with {len(loc['block_nodes'])} node(s) kept in FP32, compared again:")
            log(format_report(fixed))
            log("put this under the variant in the model's spec (models/<name>/model.yaml):")
            log("    " + snippet.rstrip().replace("\n", "\n    "))
            if out_dir is not None:
                atomic_write_bytes(Path(out_dir) / "fp16_block_nodes.yaml", snippet.encode())
        else:
            log(
                "localisation found no node to keep in FP32"
                if not loc["first_nodes"]
                else "the nodes found are already blocked: blocking cannot fix this candidate"
            )
    return built(check_compare_report, report)
