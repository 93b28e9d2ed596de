"""One result record per run: build it, check it against targets, write it atomically."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path

from common import SCHEMA_VERSION
from common.errors import EXIT_PASS, EXIT_TARGET_FAILED, RuntimeFailure
from common.fsaccess import shared_file_mode
from common.record.types import built, check_record

PASS, FAIL, UNCHECKED = "pass", "fail", "unchecked"
NOT_JUDGED = "not_judged"  # a check's status: the run evaluated fewer images than the target is declared for


def check_targets(values: dict, targets, num_images: int | None = None) -> tuple[list[dict], list[str]]:
    """Compare measured values with every applicable target.

    Returns (checks, reasons): one check per threshold whose metric this run measured, and a reason string
    for each failed check. Thresholds on metrics this kind of run does not produce (FPS in an accuracy run)
    are listed as not applicable, never silently passed; a target declared for more images than the run
    evaluated (`min_images`) is "not_judged", neither passed nor failed.
    """
    checks, reasons = [], []
    for target in targets:
        minimum_images = getattr(target, "min_images", None)
        for bound, thresholds in (("min", target.minimum), ("max", target.maximum)):
            for metric, limit in thresholds.items():
                value = values.get(metric)
                if value is not None and num_images is not None and minimum_images and num_images < minimum_images:
                    checks.append(
                        {
                            "metric": metric,
                            "bound": bound,
                            "limit": limit,
                            "value": value,
                            "status": NOT_JUDGED,
                            "why": f"{num_images} images < the target's minimum {minimum_images}",
                        }
                    )
                    continue
                if value is None:
                    checks.append(
                        {"metric": metric, "bound": bound, "limit": limit, "value": None, "status": "not_applicable"}
                    )
                    continue
                ok = (value >= limit if bound == "min" else value <= limit) and not math.isnan(value)
                checks.append(
                    {"metric": metric, "bound": bound, "limit": limit, "value": value, "status": PASS if ok else FAIL}
                )
                if not ok:
                    op = ">=" if bound == "min" else "<="
                    reasons.append(f"{metric} = {value:.4f}, target {op} {limit:.4f}")
    return checks, reasons


def verdict_of(checks: list[dict], reasons: list[str]) -> str:
    """fail when any reason stands (an output or fidelity fault), pass when a target held, else unchecked."""
    if reasons:
        return FAIL
    return PASS if any(c["status"] == PASS for c in checks) else UNCHECKED


def exit_code_of(verdict: str) -> int:
    """The documented exit code of a verdict: 1 for fail, else 0."""
    return EXIT_TARGET_FAILED if verdict == FAIL else EXIT_PASS


def new_record(kind: str, **fields) -> dict:
    """A result record of `kind`: schema version, time, the fields given and the environment it ran in."""
    from common.record.envinfo import environment  # importlib.metadata: kept off every command's start-up

    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **fields,
        "environment": environment(),
    }


def _slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(text)).strip("-")


def record_filename(record: dict) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    parts = [
        stamp,
        record["model"],
        record["variant"],
        record["backend"],
        record["device"],
        record["precision"],
        f"bs{record['batch_size']}",
        record["kind"],
    ]
    return "_".join(_slug(p) for p in parts) + ".json"


def write_record(results_dir: str | Path, record: dict) -> Path:
    """Write the record under a unique name; never leaves a partial file behind, and two runs finishing in the
    same second never overwrite each other (the name is claimed with an exclusive hard link). The file gets
    the mode the umask gives any new file (mkstemp alone would make it 0600, unreadable to a CI collector).
    A file-system failure (full disk, read-only) is a RuntimeFailure naming the dir; a record that does not
    match its declared type (common/record/types.py) is one too, and nothing is written."""
    built(check_record, record)
    results_dir = Path(results_dir)
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=results_dir, prefix=".record.", suffix=".tmp")
    except OSError as exc:
        raise RuntimeFailure(f"cannot write the result record ({exc.strerror})", results_dir) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), shared_file_mode())
            f.write((json.dumps(record, indent=2, allow_nan=True) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        base = record_filename(record)
        for n in range(10_000):
            path = results_dir / (base if n == 0 else base.replace(".json", f"-{n}.json"))
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                continue
        raise RuntimeFailure(f"no free record name for {base}", results_dir)
    except OSError as exc:
        raise RuntimeFailure(f"cannot write the result record ({exc.strerror or exc})", results_dir) from None
    finally:
        with suppress(OSError):
            os.unlink(tmp)
