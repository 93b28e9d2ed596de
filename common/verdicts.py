"""Regression verdicts over the records of one matrix run.

accuracy:    the record's own absolute targets, and the relative rule against the FP32 record of the same
             model/variant on the same backend and device (e.g. FP16 AP >= FP32 AP - 0.2 points).
performance: the record's targets, and the mean FPS of repeated runs against a stored per-device / per-SDK
             baseline, with a tolerance band taken from the measured noise; a drop beyond the band is a
             regression, a rise beyond it a suspicious jump (a stale baseline or a broken measurement).

A case's status: pass | warn (passed, with something a person should see) | fail (regression or target) |
error (the case crashed, timed out or wrote no record).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import REPO_ROOT
from .engine_cache import atomic_write_bytes
from .errors import ConfigError
from .results import FAIL

PASS, WARN, FAILED, ERROR = "pass", "warn", "fail", "error"
FAILING = (FAILED, ERROR)
BASELINES_DIR = REPO_ROOT / "baselines"


@dataclass
class FpsRule:
    k_sigma: float = 3.0     # band = k * combined CoV of the mean ...
    min_band: float = 0.05   # ... never tighter than this (relative) ...
    max_band: float = 0.30   # ... nor looser: a drop past max_band is always a regression, however noisy
    max_cov: float = 0.10    # combined CoV above this: the verdict is flagged as noisy
    jumps: str = "fail"      # a rise past the band: fail | warn
    noisy: str = "warn"      # a noisy measurement inside the band: warn | fail


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(text)).strip("-") or "unknown"


def baseline_key(case: dict) -> str:
    return f"{case['model']}/{case['variant']}/{case['backend']}/{case['precision']}/bs{case['batch_size']}"


def baseline_path(baselines_dir: str | Path, device: str, sdk: str) -> Path:
    return Path(baselines_dir) / _slug(device) / f"{_slug(sdk)}.json"


def read_baseline(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"unreadable baseline file ({exc})", path) from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise ConfigError("baseline file has no 'entries' mapping", path)
    return data["entries"]


def fps_stats(records: list[dict]) -> dict:
    """Mean FPS over repeated runs and the noise of that mean's estimate (CoV across runs; with one run, the
    within-run CoV of the iteration times stands in)."""
    fps = np.array([r["metrics"]["fps"] for r in records], np.float64)
    mean = float(fps.mean())
    within = float(np.mean([r["timing"]["cov"] for r in records]))
    across = float(fps.std(ddof=1) / mean) if fps.size > 1 and mean > 0 else None
    return {"fps": mean, "fps_runs": fps.tolist(), "repeats": int(fps.size), "cov_across": across,
            "cov_within": within, "cov": across if across is not None else within}


def compare_fps(stats: dict, base: dict, rule: FpsRule) -> tuple[str, str, dict]:
    """(status, message, numbers) of a measured mean FPS against a baseline entry."""
    combined = math.sqrt(stats["cov"] ** 2 + float(base.get("cov", 0.0)) ** 2)
    band = min(max(rule.k_sigma * combined, rule.min_band), rule.max_band)
    ratio = stats["fps"] / base["fps"] if base["fps"] > 0 else float("inf")
    nums = {"baseline_fps": base["fps"], "ratio": ratio, "band": band, "combined_cov": combined}
    text = (f"FPS {stats['fps']:.1f} vs baseline {base['fps']:.1f} ({(ratio - 1) * 100:+.1f}%, "
            f"band ±{band * 100:.1f}%, CoV {combined * 100:.1f}%)")
    if ratio < 1 - band:
        return FAILED, f"FPS regression: {text}", nums
    if ratio > 1 + band:
        status = FAILED if rule.jumps == "fail" else WARN
        return status, f"suspicious FPS jump (update the baseline if it is real): {text}", nums
    if combined > rule.max_cov:
        status = FAILED if rule.noisy == "fail" else WARN
        return status, f"noisy measurement, only drops beyond the band are resolved: {text}", nums
    return PASS, text, nums


def _reference(outcome: dict, outcomes: list[dict]) -> dict | None:
    """The FP32 accuracy outcome of the same model/variant/backend, preferring the same batch size."""
    c = outcome["case"]
    refs = [o for o in outcomes if o["case"]["kind"] == "accuracy" and o["case"]["precision"] == "fp32"
            and all(o["case"][k] == c[k] for k in ("model", "variant", "backend"))]
    refs.sort(key=lambda o: (o["case"]["batch_size"] != c["batch_size"], o["case"]["batch_size"]))
    return refs[0] if refs else None


def _record_checks(record: dict) -> tuple[str, list[str]]:
    if record["verdict"] == FAIL:
        return FAILED, [f"target: {r}" for r in record["reasons"]]
    if record["verdict"] == "unchecked":
        return PASS, ["no absolute target applies"]
    return PASS, [f"targets held ({sum(c['status'] == 'pass' for c in record['checks'])} checks)"]


def _worst(statuses) -> str:
    order = [PASS, WARN, FAILED, ERROR]
    return max(statuses, key=order.index, default=PASS)


def _judge_accuracy(v: dict, outcome: dict, outcomes: list[dict], rule: dict) -> list[str]:
    """Statuses of the relative rule: this case's metrics against its FP32 reference (none for FP32 itself)."""
    c, record = outcome["case"], outcome["records"][0]
    if record["dataset"].get("stopped_by"):   # the pre-flight failed it: a record with reasons, no metrics
        v["notes"].append(f"stopped by the {record['dataset']['stopped_by']}: " + "; ".join(record["reasons"]))
        return [FAILED]
    m = record["metrics"]
    v["values"] = {"AP": m["AP"], "AP50": m["AP50"], "images": record["dataset"]["num_images"]}
    if c["precision"] == "fp32":
        return []
    ref = _reference(outcome, outcomes)
    if ref is None or ref["status"] != "ok" or not ref["records"]:
        v["notes"].append("no FP32 reference result in this run: relative rule not applied")
        return [WARN]
    ref_record = ref["records"][0]
    differs = [what for what, get in (("image count", lambda r: r["dataset"]["num_images"]),
                                      ("device", lambda r: r["device"])) if get(ref_record) != get(record)]
    if differs:
        v["notes"].append(f"FP32 reference has a different {' and '.join(differs)}: relative rule not applied")
        return [WARN]
    statuses = []
    for metric, drop in rule.items():
        ref_value, value = ref_record["metrics"][metric], m[metric]
        ok = value * 100 >= ref_value * 100 - drop - 1e-9
        statuses.append(PASS if ok else FAILED)
        v["values"][f"ref_{metric}"] = ref_value
        v["notes"].append(f"{'' if ok else 'accuracy regression: '}{metric} {value * 100:.2f} "
                          f"{'>=' if ok else '<'} FP32 {ref_value * 100:.2f} - {drop:g} points")
    return statuses


def _judge_performance(v: dict, outcome: dict, baselines: dict, path: Path, rule: FpsRule) -> list[str]:
    """Status of the mean FPS of the repeats against the case's baseline entry."""
    stats = fps_stats(outcome["records"])
    v["values"] = stats
    v["baseline_file"] = str(path)
    key = baseline_key(outcome["case"])
    base = baselines.get(key)
    if base is None:
        v["notes"].append(f"no baseline for {key} in {path} (FPS {stats['fps']:.1f}); "
                          "record one with `scripts/regress.py baseline-update`")
        return [WARN]
    status, text, nums = compare_fps(stats, base, rule)
    v["values"].update(nums)
    v["notes"].append(text)
    return [status]


def judge(outcomes: list[dict], relative: dict, baselines_dir: str | Path = BASELINES_DIR,
          device_name: str | None = None, rule: FpsRule | None = None) -> list[dict]:
    """One verdict per case outcome. `relative` maps (model spec argument, variant) to its {metric: points}
    rule (see matrix.relative_rules); outcomes carry their records (loaded by the caller)."""
    rule = rule or FpsRule()
    baseline_files: dict = {}
    verdicts = []
    for o in outcomes:
        c, records = o["case"], o["records"]
        v = {"id": c["id"], "case": c, "values": {}, "notes": [], "duration_s": o.get("duration_s", 0.0)}
        verdicts.append(v)
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
        if c["kind"] == "accuracy":
            statuses += _judge_accuracy(v, o, outcomes, relative[(c["spec"], c["variant"])])
        else:
            path = baseline_path(baselines_dir, device_name or v["device"], v["sdk"])
            if path not in baseline_files:
                baseline_files[path] = read_baseline(path)
            statuses += _judge_performance(v, o, baseline_files[path], path, rule)
        v["status"] = _worst(statuses)
    return verdicts


def update_baselines(verdicts: list[dict], baselines_dir: str | Path = BASELINES_DIR,
                     device_name: str | None = None, only=None) -> list[Path]:
    """Write the measured FPS of every passing-or-warned performance case into its baseline file (the explicit
    `baseline-update` command is the only caller). Entries of other cases in the file are kept."""
    by_file: dict = {}
    for v in verdicts:
        if v["case"]["kind"] != "performance" or v["status"] == ERROR or (only and not only(v)):
            continue
        path = baseline_path(baselines_dir, device_name or v["device"], v["sdk"])
        by_file.setdefault(path, []).append(v)
    written = []
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for path, vs in sorted(by_file.items()):
        entries = read_baseline(path)
        for v in vs:
            s = v["values"]
            entries[baseline_key(v["case"])] = {"fps": s["fps"], "cov": s["cov"], "repeats": s["repeats"],
                                                "fps_runs": s["fps_runs"], "updated": now,
                                                "git_commit": v.get("git_commit")}
        data = {"device": device_name or vs[0]["device"], "sdk": vs[0]["sdk"],
                "entries": dict(sorted(entries.items()))}
        atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
        written.append(path)
    return written
