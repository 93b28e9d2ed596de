"""Append-only results history: one JSON line per record, to plot trends and find the last good run.

Each line is a record of the suite plus `run_id` and the regression `status` its case got. Lines are only
ever appended (one write per line, O_APPEND), so concurrent writers never interleave partial lines.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from common.errors import InputError


def read_history(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                # a line cut by a crash mid-write is the only way to get here; say where, keep the rest
                raise InputError(f"line {n} is not JSON", path) from None
    return rows


def append_run(path: str | Path, run_id: str, verdicts: list[dict], records_by_id: dict) -> int:
    """Append every record of a run once. Shards of one pipeline share the run id and report one after the
    other, then the merge reports them all: a case is keyed (run id, case id), so every shard's cases are
    appended by the first report that has them and by no later one."""
    path = Path(path)
    stored = {(row.get("run_id"), row.get("case_id")) for row in read_history(path)}
    verdicts = [v for v in verdicts if (run_id, v["id"]) not in stored]
    if not verdicts:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for v in verdicts:
            for record in records_by_id.get(v["id"], []):
                line = json.dumps({"run_id": run_id, "case_id": v["id"], "status": v["status"], **record},
                                  sort_keys=False, allow_nan=True) + "\n"
                os.write(fd, line.encode())
                n += 1
        os.fsync(fd)
    finally:
        os.close(fd)
    return n


def metric_series(rows: list[dict], case_id: str, metric: str) -> list[tuple[str, str, float]]:
    """(run_id, time, value) of a metric for one case across runs, in history order; repeats are averaged."""
    by_run: dict = {}
    for row in rows:
        if row.get("case_id") == case_id and metric in row.get("metrics", {}):
            by_run.setdefault(row["run_id"], (row["time"], []))[1].append(row["metrics"][metric])
    return [(run, t, sum(vals) / len(vals)) for run, (t, vals) in by_run.items()]


def last_good(rows: list[dict], case_id: str, before_run: str | None = None) -> dict | None:
    """The latest history row of a case whose status was pass or warn (a warn passed: noisy, no baseline yet),
    optionally only runs before `before_run`."""
    best = None
    for row in rows:
        if before_run is not None and row.get("run_id") == before_run:
            break
        if row.get("case_id") == case_id and row.get("status") in ("pass", "warn"):
            best = row
    return best
