"""Is a candidate engine computing what the FP32 model computes? Per-output tensor errors, detection matching and
the AP difference of the two on the same images, judged against the variant's `fidelity:` tolerances
(common/tolerances.py). The maths alone: the runners, the images and the reports live with their callers
(common/harness/reference_compare.py, common/compare/fidelity_report.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from common.compare.comparator import Comparison, match_detections
from common.decode.outputs import get_decoder
from common.errors import InputError
from common.evaluate.metrics import CocoEvaluator
from common.tolerances import Tolerance

if TYPE_CHECKING:
    from common.config.specs import Variant


@dataclass
class Images:
    """Preprocessed images both engines are fed, with what decoding and evaluating their detections needs."""

    image_ids: np.ndarray  # [n]
    inputs: np.ndarray  # [n, 3, H, W] float32
    meta: np.ndarray  # [n, 6]
    annotations: dict | None  # None: no AP is computed (tensors and matching only)


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
        # images whose ground truth AP is computed over: the AP of one image is that image's ranking of its few
        # boxes (one low-score box moving past a true positive is 0.1 AP), which no resampling of it can separate
        # from the engine's error
        per_image_gt = sum(
            (c.npig[:, 0] for c in tables["reference"].cats if c is not None), np.zeros(len(images.image_ids))
        )
        report["ap_images_with_gt"] = int(np.count_nonzero(per_image_gt > 0))
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
        if "ap_diff" in d and abs(d["ap_diff"]) > tol.max_ap_diff and d.get("ap_images_with_gt", 2) >= 2:
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
