"""Regression verdicts over the records of one matrix run.

accuracy:    the record's own absolute targets; the relative rule against the FP32 record of the same
             model/variant on the same backend and device (e.g. FP16 AP >= FP32 AP - 0.2 points); the stored
             accuracy baseline of the case (same images), with a tolerance that shrinks with the image count
             (common/ci/acc_tolerance.py); and, on the spec's full evaluation set, the spec's published `reference`
             figures as a fraction (MLPerf-style 99 %).
loadgen:     the record's own checks (LoadGen's INVALID fails it, as do its loadgen: targets) and the scenario's
             figure against its stored baseline (LOADGEN_FIGURE: Offline samples/s, SingleStream p90, MultiStream
             and Server p99), beyond LOADGEN_BAND a regression (worse) or a suspicious jump (better).
performance: the record's targets, the validity of the measurement (minimum duration and iterations reached),
             and the mean FPS of repeated runs against a stored per-device / per-SDK baseline, with a tolerance
             band taken from the measured noise; a drop beyond the band is a regression only when a second,
             independent measurement (the confirmation run) confirms it; a rise beyond it is a suspicious jump.

A case's status: pass | warn (passed, with something a person should see) | fail (regression or target) |
error (the case crashed, timed out, wrote no record or an invalid measurement) | unsupported (the backend does
not exist on this host; nothing ran). `gaps` lists what kept a verdict from being complete (no baseline, no FP32
reference, unsupported): strict mode fails on them with its own exit code.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from common.ci.acc_tolerance import DEFAULT_NOISE, DEFAULT_Z, FLOOR_POINTS, tolerance_points
from common.ci.baselines import BASELINES_DIR, Baselines, baseline_key, baseline_path, read_baseline, write_baseline  # noqa: F401
from common.ci.paired import PAIRED, judge_paired, paired_from_files
from common.errors import ConfigError, InputError
from common.metric_table import BASELINE_ACCURACY
from common.record.results import FAIL

PASS, WARN, FAILED, ERROR, UNSUPPORTED = "pass", "warn", "fail", "error", "unsupported"
FAILING = (FAILED, ERROR)
ACC_METRICS = BASELINE_ACCURACY  # the accuracy figures a baseline holds (common/metric_table.py)


@dataclass
class FpsRule:
    k_sigma: float = 3.0  # band = k * combined CoV of the mean ...
    min_band: float = 0.05  # ... never tighter than this (relative) ...
    max_band: float = 0.30  # ... nor looser: a drop past max_band is always a regression, however noisy
    max_cov: float = 0.10  # combined CoV above this: the verdict is flagged as noisy
    jumps: str = "auto"  # a rise past the band: fail | warn | auto (warn on a runtime that computes on the
    # host's cores, whose baseline may have been taken under load; fail elsewhere)
    noisy: str = "warn"  # a noisy measurement inside the band: warn | fail
    acc_z: float = DEFAULT_Z  # accuracy baseline tolerance: z standard deviations of the paired difference


def fps_stats(records: list[dict]) -> dict:
    """Mean FPS over repeated runs and the noise of that mean's estimate (CoV across runs; with one run, the
    within-run CoV of the iteration times stands in)."""
    fps = np.array([r["metrics"]["fps"] for r in records], np.float64)
    mean = float(fps.mean())
    within = float(np.mean([r["timing"]["cov"] for r in records]))
    across = float(fps.std(ddof=1) / mean) if fps.size > 1 and mean > 0 else None
    return {
        "fps": mean,
        "fps_runs": fps.tolist(),
        "repeats": int(fps.size),
        "cov_across": across,
        "cov_within": within,
        "cov": across if across is not None else within,
    }


def compare_fps(stats: dict, base: dict, rule: FpsRule) -> tuple[str, str, dict]:
    """(status, message, numbers) of a measured mean FPS against a baseline entry."""
    combined = math.sqrt(stats["cov"] ** 2 + float(base.get("cov", 0.0)) ** 2)
    band = min(max(rule.k_sigma * combined, rule.min_band), rule.max_band)
    ratio = stats["fps"] / base["fps"] if base["fps"] > 0 else float("inf")
    nums = {"baseline_fps": base["fps"], "ratio": ratio, "band": band, "combined_cov": combined}
    text = (
        f"FPS {stats['fps']:.1f} vs baseline {base['fps']:.1f} ({(ratio - 1) * 100:+.1f}%, "
        f"band ±{band * 100:.1f}%, CoV {combined * 100:.1f}%)"
    )
    if ratio < 1 - band:
        return FAILED, f"FPS regression: {text}", nums
    if ratio > 1 + band:
        status = WARN if rule.jumps == "warn" else FAILED  # "auto" is resolved by the caller, per backend
        why = "" if status == FAILED else " (a warning: --jumps warn, or auto on a host-computing runtime)"
        return status, f"suspicious FPS jump (update the baseline if it is real){why}: {text}", nums
    if combined > rule.max_cov:
        status = FAILED if rule.noisy == "fail" else WARN
        verb = "fails (--noisy fail)" if rule.noisy == "fail" else "only drops beyond the band are resolved"
        return status, f"noisy measurement (combined CoV above {rule.max_cov * 100:.0f}%): {verb}: {text}", nums
    return PASS, text, nums


# Two-sided 95 % Student t quantiles by degrees of freedom: the half-width of the mean paired ratio's interval
_T975 = {
    1: 12.71,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    15: 2.131,
    20: 2.086,
    30: 2.042,
    60: 2.000,
}


def _t975(dof: int) -> float:
    return _T975.get(dof) or _T975[max(k for k in _T975 if k <= dof)]


def paired_ratio(a_records: list[dict], b_records: list[dict]) -> tuple[float, float | None, int]:
    """(mean FPS ratio of the A/B pairs, its spread, pairs). The i-th record of each side ran back to back, so
    each pair's ratio cancels the node's drift; the spread is the 95 % half-width of the mean ratio from the
    pairs' own scatter (Student t), None with fewer than 2 pairs."""
    n = min(len(a_records), len(b_records))
    r = np.array(
        [
            a["metrics"]["fps"] / b["metrics"]["fps"] if b["metrics"]["fps"] > 0 else np.inf
            for a, b in zip(a_records[:n], b_records[:n])
        ],
        np.float64,
    )
    mean = float(r.mean())
    if n < 2 or not np.isfinite(r).all():
        return mean, None, n
    return mean, float(_t975(n - 1) * r.std(ddof=1) / math.sqrt(n)), n


def confirm_fps(
    first: tuple[str, str, dict],
    confirm_records: list[dict] | None,
    base: dict,
    rule: FpsRule,
    base_records: list[dict] | None = None,
) -> tuple[str, str, dict]:
    """A drop past the band fails only when an independent re-measurement (after the matrix, see
    regress.confirm_fps_failures) confirms it; the message states both figures. With `base_records` the
    re-measurement was A/B/A/B, interleaved with the baseline's own model on the same runtime: the case is then
    judged by its FPS relative to that model measured under the same conditions (drift of the node cancels)."""
    status, text, nums = first
    if status != FAILED or not text.startswith("FPS regression"):
        return first
    if not confirm_records:
        return FAILED, f"{text}; not re-measured (no confirmation run)", nums
    if base_records:
        now, then = fps_stats(confirm_records), fps_stats(base_records)
        ratio, spread, pairs = paired_ratio(confirm_records, base_records)
        band = nums["band"]
        nums = {
            **nums,
            "confirm_fps": now["fps"],
            "ab_baseline_fps": then["fps"],
            "confirm_ratio": ratio,
            "confirm_spread": spread,
            "confirm_pairs": pairs,
        }
        spread_text = (
            f"spread ±{spread * 100:.1f}% over {pairs} pairs"
            if spread is not None
            else f"spread not estimated ({pairs} pair)"
        )
        ab = (
            f"A/B interleaved with the baseline's model: {now['fps']:.1f} vs {then['fps']:.1f} FPS "
            f"({(ratio - 1) * 100:+.1f}%, {spread_text}, band ±{band * 100:.1f}%)"
        )
        # a drop counts only beyond the band and beyond what the pairs themselves scatter by (a drop past
        # max_band always counts, however noisy the node)
        if ratio < 1 - band and (spread is None or ratio < 1 - min(spread, rule.max_band)):
            return FAILED, f"FPS regression confirmed: first {text[len('FPS regression: ') :]}; {ab}", nums
        where = "inside the band" if ratio >= 1 - band else "inside the re-measurement's own spread"
        return WARN, f"unconfirmed FPS drop: first {text[len('FPS regression: ') :]}; {ab}, {where}", nums
    stats2 = fps_stats(confirm_records)
    status2, text2, nums2 = compare_fps(stats2, base, rule)
    nums = {**nums, "confirm_fps": stats2["fps"], "confirm_ratio": nums2["ratio"]}
    if status2 == FAILED and text2.startswith("FPS regression"):
        return (
            FAILED,
            f"FPS regression confirmed: first {text[len('FPS regression: ') :]}; "
            f"re-measured {stats2['fps']:.1f} FPS ({(nums2['ratio'] - 1) * 100:+.1f}%)",
            nums,
        )
    return (
        WARN,
        (
            f"unconfirmed FPS drop: first {text[len('FPS regression: ') :]}; re-measured "
            f"{stats2['fps']:.1f} FPS ({(nums2['ratio'] - 1) * 100:+.1f}%), inside the band"
        ),
        nums,
    )


def compare_accuracy(value: float, images: int, base: dict, noise: float, z: float) -> tuple[str, str, float]:
    """(status, message, tolerance) of one metric (0-1 scale) against its baseline on the same images."""
    tol = tolerance_points(images, noise, z)
    ref = base["value"]
    delta = (value - ref) * 100
    text = (
        f"{base['metric']} {value * 100:.2f} vs baseline {ref * 100:.2f} ({delta:+.2f} points, "
        f"tolerance ±{tol:.2f} at {images} images)"
    )
    if delta < -tol - 1e-9:
        return FAILED, f"accuracy regression: {text}", tol
    if delta > tol + 1e-9:
        # better than the baseline beyond the noise: not a failure, but the baseline is stale or the workload
        # changed; a person should look
        return WARN, f"accuracy above its baseline (update the baseline if it is real): {text}", tol
    return PASS, text, tol


def timing_validity(record: dict) -> list[str]:
    """MLPerf's rule: a performance run that did not reach its minimum duration and iteration count is invalid.
    Records written before the settings were recorded are not judged by it."""
    settings, t = record.get("timing_settings"), record.get("timing") or {}
    if not settings:
        return []
    out = []
    if t.get("iterations", 0) < settings.get("min_iters", 0):
        out.append(f"{t.get('iterations')} timed iterations < the minimum {settings['min_iters']}")
    if t.get("total_s", 0.0) < settings.get("min_duration_s", 0.0) - 1e-9:
        out.append(f"{t.get('total_s', 0.0):.3f} s timed < the minimum duration {settings['min_duration_s']:g} s")
    return out


def _reference(outcome: dict, outcomes: list[dict]) -> dict | None:
    """The FP32 accuracy outcome of the same model/variant/backend, preferring the same batch size."""
    c = outcome["case"]
    refs = [
        o
        for o in outcomes
        if o["case"]["kind"] == "accuracy"
        and o["case"]["precision"] == "fp32"
        and all(o["case"][k] == c[k] for k in ("model", "variant", "backend"))
    ]
    refs.sort(key=lambda o: (o["case"]["batch_size"] != c["batch_size"], o["case"]["batch_size"]))
    return refs[0] if refs else None


def _record_checks(record: dict) -> tuple[str, list[str]]:
    if record["verdict"] == FAIL:
        return FAILED, [f"target: {r}" for r in record["reasons"]]
    if record["verdict"] == "unchecked":
        return PASS, ["no absolute target applies"]
    return PASS, [f"targets held ({sum(c['status'] == 'pass' for c in record['checks'])} checks)"]


def _worst(statuses) -> str:
    order = [PASS, WARN, UNSUPPORTED, FAILED, ERROR]
    return max(statuses, key=order.index, default=PASS)


def _rules_of(raw: dict) -> dict:
    """Accept both {metric: points} (the relative rule alone) and matrix.case_rules()'s full mapping."""
    if "relative" in raw:
        return raw
    return {
        "relative": raw,
        "accuracy_noise": DEFAULT_NOISE,
        "reference": {},
        "reference_fraction": 0.99,
        "evaluation_annotation": None,
    }


def _judge_relative(v: dict, outcome: dict, outcomes: list[dict], relative: dict) -> list[str]:
    """Statuses of the relative rule: this case's metrics against its FP32 reference (none for FP32 itself)."""
    c, record = outcome["case"], outcome["records"][0]
    m = record["metrics"]
    if c["precision"] == "fp32":
        return []
    ref = _reference(outcome, outcomes)
    if ref is None or ref["status"] != "ok" or not ref["records"]:
        v["notes"].append("no FP32 reference result in this run: relative rule not applied")
        v["gaps"].append("no FP32 reference")
        return [WARN]
    ref_record = ref["records"][0]
    differs = [
        what
        for what, get in (("image count", lambda r: r["dataset"]["num_images"]), ("device", lambda r: r["device"]))
        if get(ref_record) != get(record)
    ]
    if differs:
        v["notes"].append(f"FP32 reference has a different {' and '.join(differs)}: relative rule not applied")
        v["gaps"].append("FP32 reference not comparable")
        return [WARN]
    paired, why = _paired(
        v, outcome.get("detections_path"), ref.get("detections_path"), record, list(relative), "FP32 reference"
    )
    statuses = []
    for metric, drop in relative.items():
        ref_value, value = ref_record["metrics"][metric], m[metric]
        v["values"][f"ref_{metric}"] = ref_value
        if paired is not None:
            regressed, _, text = judge_paired(metric, paired, drop)
            statuses.append(FAILED if regressed else PASS)
            v["notes"].append(
                f"{'accuracy regression: ' if regressed else ''}{metric} {value * 100:.2f} vs FP32 "
                f"{ref_value * 100:.2f}: {text}"
            )
            continue
        ok = value * 100 >= ref_value * 100 - drop - 1e-9
        statuses.append(PASS if ok else FAILED)
        v["notes"].append(
            f"{'' if ok else 'accuracy regression: '}{metric} {value * 100:.2f} "
            f"{'>=' if ok else '<'} FP32 {ref_value * 100:.2f} - {drop:g} points"
        )
    if why:
        v["notes"].append(why)
    return statuses


def _paired(
    v: dict, candidate_dets, reference_dets, record: dict, metrics: list, against: str
) -> tuple[dict | None, str | None]:
    """(the paired interval against `against`, None) when both detections files exist (its bounds go to the
    values); otherwise (None, the note saying that the fixed rule was used and why)."""
    if not candidate_dets or not reference_dets or not Path(reference_dets).is_file():
        missing = "this case's" if not candidate_dets else f"the {against}'s"
        v["values"].setdefault("accuracy_rule", "fixed")
        return None, (f"accuracy vs {against} by the fixed rule: {missing} detections are not available for a {PAIRED}")
    try:
        paired = paired_from_files(candidate_dets, reference_dets, record, metrics=metrics)
    except (InputError, ValueError) as exc:
        v["values"].setdefault("accuracy_rule", "fixed")
        return None, f"accuracy vs {against} by the fixed rule: no {PAIRED} ({exc})"
    v["values"]["accuracy_rule"] = PAIRED
    key = "ref" if against == "FP32 reference" else "baseline"
    for metric, (lo, hi) in paired["diff"].items():
        v["values"][f"{key}_{metric}_diff_lo"], v["values"][f"{key}_{metric}_diff_hi"] = lo, hi
    v.setdefault("paired", {})[key] = paired
    return paired, None


def _judge_published(v: dict, outcome: dict, rules: dict) -> list[str]:
    """The spec's published figures (`reference:`) as a fraction, MLPerf-style, on the spec's full evaluation
    set only: on a subset the sampling noise of AP (several points at 100 images) would swamp a 1 % rule."""
    ref = {
        k: val
        for k, val in (rules.get("reference") or {}).items()
        if k in ACC_METRICS and isinstance(val, (int, float))
    }
    if not ref:
        return []
    record = outcome["records"][0]
    ann = Path(str(record["dataset"].get("annotation", ""))).name
    capped = "--max-images" in (outcome.get("command") or [])
    if capped or (rules.get("evaluation_annotation") and ann != rules["evaluation_annotation"]):
        v["notes"].append(
            f"published reference not applied: {ann} "
            f"{'capped by --max-images' if capped else 'is not the spec evaluation set'}"
        )
        return []
    frac = rules.get("reference_fraction", 0.99)
    statuses = []
    for metric, published in ref.items():
        value = record["metrics"][metric]
        ok = value >= frac * published - 1e-9
        statuses.append(PASS if ok else FAILED)
        v["notes"].append(
            f"{'' if ok else 'accuracy regression: '}{metric} {value * 100:.2f} "
            f"{'>=' if ok else '<'} {frac * 100:g}% of the published {published * 100:.2f}"
        )
    return statuses


def _judge_acc_baseline(v: dict, outcome: dict, bases: Baselines, device: str, rules: dict, rule: FpsRule) -> list[str]:
    record = outcome["records"][0]
    key = baseline_key(outcome["case"])
    base, path, note = bases.lookup(device, v["sdk"], key)
    v["baseline_file"] = str(path)
    images = record["dataset"]["num_images"]
    if base is None:
        v["notes"].append(
            f"no accuracy baseline for {key} in {path}; record one with `scripts/regress.py baseline-update`"
        )
        v["gaps"].append("missing accuracy baseline")
        return [WARN]
    ann = Path(str(record["dataset"].get("annotation", ""))).name
    if base.get("images") != images or base.get("annotation") != ann:
        v["notes"].append(
            f"accuracy baseline of {key} is on {base.get('images')} images of "
            f"{base.get('annotation')}, this run on {images} of {ann}: not comparable"
        )
        v["gaps"].append("accuracy baseline not comparable")
        return [WARN]
    if note:
        v["notes"].append(note)
    statuses = []
    metrics = [metric for metric in ACC_METRICS if metric in base]
    if base.get("detections"):
        paired, why = _paired(
            v, outcome.get("detections_path"), path.parent / base["detections"], record, metrics, "baseline"
        )
        if paired is not None:  # the report draws the images whose detections changed most against it
            v["baseline_detections"] = str(path.parent / base["detections"])
    else:
        paired, why = (
            None,
            (
                "accuracy vs baseline by the image-count tolerance: the baseline keeps no detections "
                f"for a {PAIRED} (`baseline-update` stores them)"
            ),
        )
        v["values"].setdefault("accuracy_rule", "fixed")
    for metric in metrics:
        if paired is not None:
            regressed, rose, text = judge_paired(metric, paired, FLOOR_POINTS)
            v["values"][f"baseline_{metric}"] = base[metric]
            status = FAILED if regressed else WARN if rose else PASS
            lead = (
                "accuracy regression: "
                if regressed
                else "accuracy above its baseline (update the baseline if it is real): "
                if rose
                else ""
            )
            v["notes"].append(
                f"{lead}{metric} {record['metrics'][metric] * 100:.2f} vs baseline {base[metric] * 100:.2f}: {text}"
            )
            statuses.append(status)
            continue
        status, text, tol = compare_accuracy(
            record["metrics"][metric],
            images,
            {"metric": metric, "value": base[metric]},
            rules.get("accuracy_noise", DEFAULT_NOISE),
            rule.acc_z,
        )
        v["values"][f"baseline_{metric}"] = base[metric]
        v["values"]["tolerance_points"] = tol
        v["notes"].append(text)
        statuses.append(status)
    if why:
        v["notes"].append(why)
    return statuses


def _judge_timed_outputs(v: dict, outcome: dict, outcomes: list[dict]) -> list[str]:
    """The detections the performance run timed against the accuracy run's on the same image (same model,
    variant, backend and precision): a fast engine that computes something else fails."""
    from common.compare.timed_outputs import accuracy_detections, compare

    c = outcome["case"]
    timed = [r.get("timed_detections") for r in outcome["records"] if r.get("timed_detections")]
    if not timed:
        return []  # records written before the check existed
    if "image_id" not in timed[0]:
        v["notes"].append(f"timed outputs not compared: {timed[0].get('reason')}")
        return []
    acc = next(
        (
            o
            for o in outcomes
            if o["case"]["kind"] == "accuracy"
            and o.get("detections_path")
            and all(o["case"][k] == c[k] for k in ("model", "variant", "backend", "precision"))
        ),
        None,
    )
    if acc is None:
        v["notes"].append("timed outputs not compared: no accuracy run of this model and precision in the run")
        return []
    statuses = []
    for t in timed:
        ok, text, nums = compare(t, accuracy_detections(Path(acc["detections_path"]), t["image_id"]))
        statuses.append(PASS if ok else FAILED)
        v.setdefault("values", {}).update(nums)
        if not ok:
            v["notes"].append(f"timed outputs differ from the accuracy run's: {text}")
            break
    else:
        v["notes"].append(f"timed outputs match the accuracy run's ({text})")
    return statuses


# the figure a LoadGen scenario is judged by against its baseline, and whether higher is better
LOADGEN_FIGURE = {
    "Offline": ("qps", True),
    "SingleStream": ("p90_ms", False),
    "MultiStream": ("p99_ms", False),
    "Server": ("p99_ms", False),
}
LOADGEN_BAND = 0.10  # relative: one short LoadGen run has no repeats to measure its noise from


def _judge_loadgen(v: dict, outcome: dict, bases: Baselines, device: str, rule: FpsRule) -> list[str]:
    """The scenario's figure against the case's baseline entry (a Server run searched for its peak QPS is judged
    by that QPS)."""
    s = outcome["records"][0]["loadgen"]
    metric, higher = LOADGEN_FIGURE[s["scenario"]]
    if s["scenario"] == "Server" and s.get("search"):
        metric, higher = "qps", True
    value = s.get(metric)
    v["values"].update(
        {
            "scenario": s["scenario"],
            "valid": s["valid"],
            "qps": s.get("qps"),
            "p99_ms": s.get("p99_ms"),
            "metric": metric,
            "value": value,
        }
    )
    key = baseline_key(outcome["case"])
    base, path, note = bases.lookup(device, v["sdk"], key)
    v["baseline_file"] = str(path)
    if not s["valid"] or value is None:
        return []  # the record's own check already failed it; an invalid figure is no baseline comparison
    if base is None:
        v["notes"].append(
            f"no baseline for {key} in {path} ({metric} {value:.3f}); record one with "
            "`scripts/regress.py baseline-update`"
        )
        v["gaps"].append("missing LoadGen baseline")
        return [WARN]
    if note:
        v["notes"].append(note)
    ratio = value / base["value"] if base["value"] else float("inf")
    v["values"].update(baseline_value=base["value"], ratio=ratio)
    text = (
        f"LoadGen {s['scenario']} {metric} {value:.3f} vs baseline {base['value']:.3f} "
        f"({(ratio - 1) * 100:+.1f}%, band ±{LOADGEN_BAND * 100:.0f}%)"
    )
    worse, better = (
        (ratio < 1 - LOADGEN_BAND, ratio > 1 + LOADGEN_BAND)
        if higher
        else (ratio > 1 + LOADGEN_BAND, ratio < 1 - LOADGEN_BAND)
    )
    if worse:
        v["notes"].append(f"LoadGen regression: {text}")
        return [FAILED]
    if better:
        jump = (
            WARN
            if rule.jumps == "warn" or (rule.jumps == "auto" and _host_compute(outcome["case"]["backend"]))
            else FAILED
        )
        v["notes"].append(f"suspicious LoadGen jump (update the baseline if it is real): {text}")
        return [jump]
    v["notes"].append(text)
    return [PASS]


def _host_compute(backend: str) -> bool:
    """Whether the backend computes on the host's cores (a CPU runner): other jobs' load moves its FPS both
    ways, so a baseline taken on a loaded runner makes the next idle run look like a jump."""
    from common.runtime.backends import BACKENDS, backend_class

    return backend in BACKENDS and backend_class(backend).capabilities.host_compute


def _judge_performance(v: dict, outcome: dict, bases: Baselines, device: str, rule: FpsRule) -> list[str]:
    """Status of the mean FPS of the repeats against the case's baseline entry."""
    stats = fps_stats(outcome["records"])
    v["values"].update(stats)
    key = baseline_key(outcome["case"])
    base, path, note = bases.lookup(device, v["sdk"], key)
    v["baseline_file"] = str(path)
    if base is None:
        v["notes"].append(
            f"no baseline for {key} in {path} (FPS {stats['fps']:.1f}); "
            "record one with `scripts/regress.py baseline-update`"
        )
        v["gaps"].append("missing FPS baseline")
        return [WARN]
    if note:
        v["notes"].append(note)
    if rule.jumps == "auto":
        rule = replace(rule, jumps="warn" if _host_compute(outcome["case"]["backend"]) else "fail")
    status, text, nums = confirm_fps(
        compare_fps(stats, base, rule), outcome.get("confirm_records"), base, rule, outcome.get("confirm_base_records")
    )
    v["values"].update(nums)
    v["notes"].append(text)
    return [status]


INT8_NO_SPEED = "INT8 brings no speed on this backend"


def _judge_int8_speed(v: dict, outcome: dict, outcomes: list[dict]) -> list[str]:
    """An INT8 performance case against the same backend's FP16 / FP32 performance at the same batch size in the
    same run: INT8 whose mean FPS is not above the faster of them is a warning (it costs accuracy for nothing)."""
    c = outcome["case"]
    if c["precision"] != "int8":
        return []
    refs = {
        o["case"]["precision"]: fps_stats(o["records"])["fps"]
        for o in outcomes
        if o["case"]["kind"] == "performance"
        and o["case"]["precision"] in ("fp16", "fp32")
        and o["status"] == "ok"
        and o["records"]
        and all(o["case"][k] == c[k] for k in ("model", "variant", "backend", "batch_size"))
    }
    if not refs:
        v["notes"].append(
            "INT8 speed not judged: no FP16 / FP32 performance case of this backend and batch size in the run"
        )
        return []
    fps = fps_stats(outcome["records"])["fps"]
    best = max(refs, key=lambda precision: refs[precision])
    v["values"]["int8_speedup"] = fps / refs[best] if refs[best] > 0 else None
    text = f"INT8 FPS {fps:.1f} vs {best.upper()} {refs[best]:.1f} in the same run (x{fps / refs[best]:.2f})"
    if fps <= refs[best]:
        v["int8_speed"] = "no speed"
        v["notes"].append(f"{INT8_NO_SPEED}: {text}")
        return [WARN]
    v["int8_speed"] = "faster"
    v["notes"].append(text)
    return [PASS]


def judge(
    outcomes: list[dict],
    relative: dict,
    baselines_dir: str | Path = BASELINES_DIR,
    device_name: str | None = None,
    rule: FpsRule | None = None,
) -> list[dict]:
    """One verdict per case outcome. `relative` maps (model spec argument, variant) to the variant's rules
    (matrix.case_rules; a bare {metric: points} is the relative rule alone); outcomes carry their records."""
    rule = rule or FpsRule()
    bases = Baselines(baselines_dir)
    verdicts = []
    for o in outcomes:
        c, records = o["case"], o["records"]
        v = {"id": c["id"], "case": c, "values": {}, "notes": [], "gaps": [], "duration_s": o.get("duration_s", 0.0)}
        verdicts.append(v)
        if o["status"] == UNSUPPORTED:
            v["status"] = UNSUPPORTED
            v["notes"].append(o.get("error") or "unsupported here")
            v["gaps"].append("unsupported")
            continue
        if o["status"] != "ok" or not records:
            v["status"] = ERROR
            v["notes"].append(o.get("error") or "no record written")
            continue
        statuses = []
        for r in records:
            s, notes = _record_checks(r)
            statuses.append(s)
            v["notes"] += [n for n in notes if n not in v["notes"]]
        first = records[0]
        v["device"], v["sdk"] = first["device"], first["engine"]["runtime"]
        v["git_commit"] = first.get("environment", {}).get("git_commit")
        device = device_name or v["device"]
        if c["kind"] == "accuracy" and first["dataset"].get("stopped_by"):
            # the pre-flight failed it: a record with reasons and no metrics, so no rule can be applied
            v["notes"].append(f"stopped by the {first['dataset']['stopped_by']}: " + "; ".join(first["reasons"]))
            statuses.append(FAILED)
        elif c["kind"] == "accuracy":
            rules = _rules_of(relative[(c["spec"], c["variant"])])
            m = first["metrics"]
            v["values"] = {"AP": m["AP"], "AP50": m["AP50"], "images": first["dataset"]["num_images"]}
            for metric, (lo, hi) in (
                (k, iv) for k, iv in ((first.get("metrics_ci") or {}).get("stats") or {}).items() if k in ACC_METRICS
            ):
                v["values"][f"{metric}_ci_lo"], v["values"][f"{metric}_ci_hi"] = lo, hi
            statuses += _judge_relative(v, o, outcomes, rules["relative"])
            statuses += _judge_published(v, o, rules)
            statuses += _judge_acc_baseline(v, o, bases, device, rules, rule)
        elif c["kind"] == "loadgen":
            statuses += _judge_loadgen(v, o, bases, device, rule)
        else:
            invalid = [why for r in records for why in timing_validity(r)]
            if invalid:
                v["status"] = ERROR
                v["notes"].append("invalid performance run: " + "; ".join(dict.fromkeys(invalid)))
                continue
            statuses += _judge_timed_outputs(v, o, outcomes)
            statuses += _judge_performance(v, o, bases, device, rule)
            statuses += _judge_int8_speed(v, o, outcomes)
        v["status"] = _worst(statuses)
    return verdicts


def _provenance(v: dict, record: dict, outcome: dict | None) -> dict:
    env = record.get("environment") or {}
    onnx = record.get("onnx") or {}
    return {
        "onnx_sha256": onnx.get("sha256"),
        "onnx_path": onnx.get("path"),
        "runtime": v["sdk"],
        "threads": (outcome or {}).get("threads"),
        "timing_settings": record.get("timing_settings"),
        "host": env.get("hostname") or socket.gethostname(),
        "cpu": env.get("cpu"),
        "git_commit": v.get("git_commit"),
    }


def _entry_text(kind: str, e: dict | None) -> str:
    if e is None:
        return "none"
    if kind == "accuracy":
        return f"AP {e['AP'] * 100:.2f} AP50 {e['AP50'] * 100:.2f} ({e['images']} img)"
    if kind == "loadgen":
        return f"{e['metric']} {e['value']:.3f} ({e['scenario']})"
    return f"{e['fps']:.1f} FPS (CoV {e['cov'] * 100:.1f}%)"


def update_baselines(
    verdicts: list[dict],
    baselines_dir: str | Path = BASELINES_DIR,
    device_name: str | None = None,
    only=None,
    outcomes: dict | None = None,
    force: bool = False,
    echo=print,
) -> list[Path]:
    """Write the figures of every selected accuracy and performance case into its baseline file (the explicit
    `baseline-update` command is the only caller). A failing case is refused unless `force` (a regressed run must
    never become the reference the healthy model then fails against); errors and unsupported cases are never
    stored. Prints old -> new for every entry; entries of other cases in the file are kept."""
    selected = [v for v in verdicts if not only or only(v)]
    refused = [v["id"] for v in selected if v["status"] == FAILED]
    if refused and not force:
        raise BaselineRefused(refused)
    by_file: dict = {}
    for v in selected:
        if v["status"] in (ERROR, UNSUPPORTED):
            continue
        path = baseline_path(baselines_dir, device_name or v["device"], v["sdk"])
        by_file.setdefault(path, []).append(v)
    written = []
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for path, vs in sorted(by_file.items()):
        entries = read_baseline(path)
        for v in vs:
            o = (outcomes or {}).get(v["id"]) or {}
            record = (o.get("records") or [{}])[0]
            kind, key = v["case"]["kind"], baseline_key(v["case"])
            if kind == "loadgen":
                s = v["values"]
                if not s.get("valid") or s.get("value") is None:
                    continue  # an invalid LoadGen run is never a baseline
                new = {
                    "metric": s["metric"],
                    "value": s["value"],
                    "scenario": s["scenario"],
                    "qps": s["qps"],
                    "p99_ms": s["p99_ms"],
                }
            elif kind == "accuracy":
                s = v["values"]
                new = {
                    "AP": s["AP"],
                    "AP50": s["AP50"],
                    "images": s["images"],
                    "annotation": Path(str(record.get("dataset", {}).get("annotation", ""))).name,
                }
                kept = _keep_detections(o.get("detections_path"), path, key)
                if kept:
                    new["detections"] = kept
            else:
                s = v["values"]
                new = {"fps": s["fps"], "cov": s["cov"], "repeats": s["repeats"], "fps_runs": s["fps_runs"]}
            new.update(updated=now, forced=bool(force and v["status"] == FAILED), **_provenance(v, record, o))
            echo(f"{key}: {_entry_text(kind, entries.get(key))} -> {_entry_text(kind, new)}")
            entries[key] = new
        write_baseline(path, device_name or vs[0]["device"], vs[0]["sdk"], entries)
        written.append(path)
    return written


def _keep_detections(dets, baseline_file: Path, key: str) -> str | None:
    """A copy of the case's detections beside the baseline file (the paired interval of later runs reads it);
    its path relative to that file's folder."""
    if not dets or not Path(dets).is_file():
        return None
    import gzip

    from common.ci.baselines import slug
    from common.engine_cache import atomic_write_bytes

    rel = Path(f"{baseline_file.stem}.dets") / f"{slug(key)}.json.gz"
    atomic_write_bytes(baseline_file.parent / rel, gzip.compress(Path(dets).read_bytes(), mtime=0))
    return str(rel)


class BaselineRefused(ConfigError):
    """baseline-update on failing cases without --force."""

    def __init__(self, ids: list[str]):
        self.ids = ids
        super().__init__(
            f"refusing to store {len(ids)} failing case(s) as the baseline "
            f"({', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}); fix them or pass --force"
        )
