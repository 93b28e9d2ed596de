"""LoadGen's own logs -> the record's `loadgen` results: validity and LoadGen's reasons, QPS, latency percentiles,
early-stopping estimates (mlperf_log_detail.txt, one `:::MLLOG {json}` line per key), and the detections its
accuracy log holds (mlperf_log_accuracy.json: per sample its index and the bytes the SUT answered with)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.errors import RuntimeFailure

DETAIL, SUMMARY, ACCURACY = "mlperf_log_detail.txt", "mlperf_log_summary.txt", "mlperf_log_accuracy.json"
PERCENTILES = (
    ("p50_ms", "50.00"),
    ("p90_ms", "90.00"),
    ("p95_ms", "95.00"),
    ("p97_ms", "97.00"),
    ("p99_ms", "99.00"),
    ("p999_ms", "99.90"),
)
# what LoadGen's flags say when a run is invalid
_CONDITIONS = (
    ("result_perf_constraints_met", "the latency bound was not met at its percentile (performance constraints)"),
    ("result_min_duration_met", "the minimum duration was not reached"),
    ("result_min_queries_met", "the minimum query count was not reached"),
    ("early_stopping_met", "early stopping: too few queries for the percentile estimate"),
)
DETECTION_COLUMNS = 6  # x1, y1, x2, y2, score, label (float32) per detection


ERRORS = "_errors"


def read_detail(log_dir: Path) -> dict:
    """key -> value of every MLLOG line (the last one of a key wins); under ERRORS the lines LoadGen marked as
    errors, in order."""
    path = Path(log_dir) / DETAIL
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise RuntimeFailure(f"LoadGen wrote no detail log ({exc.strerror})", path) from None
    out = {}
    for line in text.splitlines():
        head, sep, body = line.partition(":::MLLOG ")
        if not sep:
            continue
        try:
            entry = json.loads(body)
        except json.JSONDecodeError:
            continue
        out[entry.get("key")] = entry.get("value")
        if (entry.get("metadata") or {}).get("is_error"):
            out.setdefault(ERRORS, []).append(f"{entry.get('key')}: {entry.get('value')}")
    return out


def _ms(ns):
    return None if ns is None else float(ns) / 1e6


def results(detail: dict, scenario: str) -> dict:
    """The scenario's results as the record keeps them (latencies in ms; `qps` is samples per second)."""
    valid = detail.get("result_validity") == "VALID"
    reasons = [] if valid else [text for key, text in _CONDITIONS if detail.get(key) is False]
    if not valid and detail.get("result_invalid_reason"):
        reasons.append(str(detail["result_invalid_reason"]))
    if detail.get("num_errors") or detail.get(ERRORS):
        reasons += detail.get(ERRORS) or [f"LoadGen logged {detail['num_errors']} error(s) (see {DETAIL})"]
        valid = False
    if "result_validity" not in detail:
        reasons.append(f"LoadGen logged no result (see {DETAIL})")
    spq = detail.get("effective_samples_per_query") or 1
    if scenario == "Server":
        qps = detail.get("result_completed_samples_per_sec")
    elif scenario == "Offline":
        qps = detail.get("result_samples_per_second")
    elif scenario == "SingleStream":  # one query (one sample) at a time
        qps = detail.get("result_qps_with_loadgen_overhead")
    else:  # MultiStream: one query of samples_per_query samples at a time, so samples / mean query latency
        mean = detail.get("result_mean_query_latency_ns")
        qps = spq * 1e9 / mean if mean else None
    es = {
        "met": detail.get("early_stopping_met"),
        "text": " ".join(str(detail.get("early_stopping_result", "")).split()) or None,
    }
    if scenario == "SingleStream":
        es["p90_ms"] = _ms(detail.get("early_stopping_latency_ss"))
    elif scenario == "MultiStream":
        es["p99_ms"] = _ms(detail.get("early_stopping_latency_ms"))
    out = {
        "valid": valid,
        "validity": detail.get("result_validity"),
        "reasons": reasons,
        "qps": None if qps is None else float(qps),
        "scheduled_qps": detail.get("result_scheduled_samples_per_sec"),
        "queries": detail.get("result_query_count"),
        "samples_per_query": spq,
        "mean_ms": _ms(detail.get("result_mean_latency_ns")),
        "min_ms": _ms(detail.get("result_min_latency_ns")),
        "max_ms": _ms(detail.get("result_max_latency_ns")),
        "early_stopping": es,
        "overlatency_queries": detail.get("result_overlatency_query_count"),
    }
    for name, pct in PERCENTILES:
        out[name] = _ms(detail.get(f"result_{pct}_percentile_latency_ns"))
    return out


def metric_values(res: dict) -> dict:
    """The names a `loadgen:` target may put thresholds on (common/config/loadgen_spec.py METRICS)."""
    values = {k: res.get(k) for k in ("qps", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p97_ms", "p99_ms", "p999_ms")}
    es = res.get("early_stopping") or {}
    values["early_stopping_ms"] = es.get("p90_ms", es.get("p99_ms"))
    return values


def read_accuracy_log(log_dir: Path) -> tuple[np.ndarray, list]:
    """(sample indices answered, one [k, 6] float32 array of detections per entry) from LoadGen's accuracy log."""
    path = Path(log_dir) / ACCURACY
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RuntimeFailure(f"cannot read LoadGen's accuracy log ({exc})", path) from None
    indices = np.array([e["qsl_idx"] for e in entries], np.int64)
    dets = [np.frombuffer(bytes.fromhex(e["data"]), np.float32).reshape(-1, DETECTION_COLUMNS) for e in entries]
    return indices, dets
