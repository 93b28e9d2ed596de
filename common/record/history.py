"""Append-only results history: one JSON line per record, to plot trends and find the last good run.

Each line is a record of the suite plus `run_id` and the regression `status` its case got. Lines are only
ever appended (one write per line, O_APPEND), so concurrent writers never interleave partial lines.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path

from common.errors import InputError
from common.record.types import built, check_history_row


def read_history(path: str | Path, warn=None) -> list[dict]:
    """Every row of the history, each checked against its declared type (common/record/types.py).

    A last line without its newline that is not JSON was cut by a crash mid-write: it is skipped with a warning
    naming the file and line, so one crash does not block every later report. Any other line that is not JSON,
    or a row that is not a valid record (a wrong type, NaN, another schema version) is refused: InputError
    (exit 2) naming the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        return []
    warn = warn or (lambda text: print(text, file=sys.stderr))
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"unreadable history ({exc})", path) from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if n == len(lines):  # the last line, and no newline after it: a write cut short
                warn(f"warning: {path}: line {n} is truncated (not JSON: {exc.msg}); skipped")
                continue
            raise InputError(f"line {n} is not JSON ({exc.msg})", path) from None
        rows.append(check_history_row(row, path, n))
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
    rows = [
        built(check_history_row, {"run_id": run_id, "case_id": v["id"], "status": v["status"], **record})
        for v in verdicts
        for record in records_by_id.get(v["id"], [])
    ]  # all checked before any is written
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the suite's appenders one at a time: the repair below needs it
        _cut_partial_line(fd, path)
        for row in rows:
            os.write(fd, (json.dumps(row, sort_keys=False, allow_nan=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(rows)


def _cut_partial_line(fd: int, path: Path) -> None:
    """A last line without its newline was cut by a crash mid-write (read_history skips it): remove it before
    appending, or the next row would be glued onto it and the history refused from then on."""
    size = os.fstat(fd).st_size
    if not size or os.pread(fd, 1, size - 1) == b"\n":
        return
    data = os.pread(fd, size, 0)
    keep = data.rfind(b"\n") + 1  # 0 when the cut line is the only one
    try:
        json.loads(data[keep:])
        os.write(fd, b"\n")  # a whole row that only lacks its newline (written by hand): kept
        return
    except ValueError:
        pass
    print(
        f"warning: {path}: removed a truncated last line ({size - keep} bytes, an interrupted write)", file=sys.stderr
    )
    os.ftruncate(fd, keep)


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
