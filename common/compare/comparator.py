"""One comparator for every "run A and B on the same inputs and judge B against A": the accuracy pre-flight,
scripts/compare.py, both export.py --checks and the engine tests.

    results = run_all({"pytorch": FunctionRunner(net_fn, ...), "onnxruntime": runner}, batches)
    verdict = compare(results, allclose(atol=1e-3, rtol=1e-3))          # or detections_agree(decode, ...)

A runner is anything with infer(x) -> {output name: array} (every backend's Runner, or FunctionRunner around a
framework's forward); the compare function is a value: (reference outputs, candidate outputs) per batch -> a
Comparison. The reference is the first runner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class FunctionRunner:
    """A callable (a PyTorch module's forward, an ONNX Runtime session's run) as a runner."""

    fn: Callable  # fn(x) -> sequence of arrays in output_names order
    output_names: list

    def infer(self, x: np.ndarray, image_ids=None) -> dict:
        """{output name: array} of fn(x), as a Runner's infer() gives them."""
        return dict(zip(self.output_names, (np.asarray(o) for o in self.fn(x))))


@dataclass
class Comparison:
    ok: bool
    details: dict = field(default_factory=dict)
    reasons: list = field(default_factory=list)


def run_all(runners: dict, batches: Iterable[np.ndarray]) -> dict[str, list[dict]]:
    """{runner name: [outputs of each batch]}, every runner on the same batches in the same order."""
    batches = list(batches)
    return {name: [runner.infer(x) for x in batches] for name, runner in runners.items()}


def compare(results: dict[str, list[dict]], compare_func: Callable) -> dict[str, Comparison]:
    """{candidate name: compare_func(reference outputs, candidate outputs)} against the first runner's results."""
    names = list(results)
    ref = results[names[0]]
    return {name: compare_func(ref, results[name]) for name in names[1:]}


# ------------------------------------------------------------------------------------------ compare functions


def allclose(atol: float, rtol: float, outputs: list | None = None) -> Callable:
    """Elementwise |cand - ref| <= atol + rtol * |ref| on every (or the named) output; details give the max
    absolute difference and the max relative one where the reference is not near zero."""

    def judge(ref: list[dict], cand: list[dict]) -> Comparison:
        details, reasons = {}, []
        for name in outputs or list(ref[0]):
            r = np.concatenate([b[name].reshape(-1) for b in ref]).astype(np.float64)
            c = np.concatenate([b[name].reshape(-1) for b in cand]).astype(np.float64)
            diff = np.abs(c - r)
            big = np.abs(r) > 1e-2  # near zero a relative difference says nothing
            excess = float(np.max(diff - (atol + rtol * np.abs(r)))) if r.size else 0.0
            ok = bool(np.isfinite(c).all()) and excess <= 0
            details[name] = {
                "max_abs": float(diff.max()) if r.size else 0.0,
                "max_rel": float((diff[big] / np.abs(r[big])).max()) if big.any() else 0.0,
                "ok": ok,
            }
            if not ok:
                reasons.append(f"{name}: |diff| up to {details[name]['max_abs']:.3e} exceeds {atol} + {rtol}*|ref|")
        return Comparison(not reasons, details, reasons)

    return judge


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] IoU of xyxy boxes; an empty pair is 0, never a division by zero."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def match_detections(
    ref: tuple, cand: tuple, score_threshold: float, iou_min: float = 0.5, score_tol: float | None = None
) -> list:
    """Pairs each reference detection at or above the threshold with a candidate detection (any score, or within
    score_tol of the reference's when given) of the same label and IoU >= iou_min, one to one. Pairs are taken
    globally by increasing (1 - IoU) + |score diff|, so among near-identical boxes (DETR queries often overlap) a
    detection pairs with the one that also agrees in score. ref / cand: (boxes [N, 4], scores [N], labels [N]).
    Returns (iou, |score diff|) or None per reference detection at or above the threshold."""
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


def detections_agree(
    decode: Callable, iou_min: float = 0.9, score_tol: float = 0.02, min_agreement: float = 0.98, describe: str = ""
) -> Callable:
    """Detections (decode(outputs) -> [(boxes, scores, labels) per image]) matched one to one with the same
    label, IoU >= iou_min and |score diff| <= score_tol. Agreement = matched / max(n_ref, n_cand): detections
    missing on either side count against it."""

    def judge(ref: list[dict], cand: list[dict]) -> Comparison:
        matched = n_ref = n_cand = 0
        for r_out, c_out in zip(ref, cand):
            for r, c in zip(decode(r_out), decode(c_out)):
                matched += sum(p is not None for p in match_detections(r, c, -np.inf, iou_min, score_tol))
                n_ref, n_cand = n_ref + len(r[0]), n_cand + len(c[0])
        agreement = matched / max(n_ref, n_cand) if max(n_ref, n_cand) else 1.0
        details = {
            "matched": matched,
            "reference_detections": n_ref,
            "candidate_detections": n_cand,
            "agreement": agreement,
            "metric": describe or f"same label, IoU >= {iou_min}, |score diff| <= {score_tol}",
        }
        ok = agreement >= min_agreement
        return Comparison(ok, details, [] if ok else [f"detection agreement {agreement:.3f} < {min_agreement}"])

    return judge
