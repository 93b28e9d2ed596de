"""`scripts/suite runs` and `scripts/suite diff`: the result records a results dir holds, as a table, and two of
them side by side; and the artifact lines every run ends with (absolute paths)."""

from __future__ import annotations

import json
from pathlib import Path

from common.errors import InputError


def artifact_lines(record: dict) -> list[str]:
    """Where the run's files are, as absolute paths: the ONNX, the engine (and whether the cache had it), the
    detections file."""
    lines = []
    onnx = (record.get("onnx") or {}).get("path")
    if onnx:
        lines.append(f" onnx:       {Path(onnx).resolve()}")
    engine = record.get("engine") or {}
    if engine.get("path"):
        source = "from the cache" if engine.get("cache_hit") else "built by this run"
        lines.append(f" engine:     {Path(engine['path']).resolve()} ({source})")
    if record.get("detections_file"):
        lines.append(f" detections: {Path(record['detections_file']).resolve()}")
    return lines


def _records(results_dir: Path) -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(results_dir.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(results_dir).parts):
            continue  # .run-state and other hidden working files
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "schema_version" in data and "kind" in data and "model" in data:
            out.append((path, data))
    return sorted(out, key=lambda pr: (pr[1].get("time", ""), str(pr[0])))


def fps_of(record: dict) -> tuple[float | None, str]:
    """(FPS, which FPS it is): a performance record's harness figure `fps` (the one targets and baselines
    judge), an accuracy record's images/s of the whole run (`run`)."""
    if record["kind"] == "performance":
        return (record.get("metrics") or {}).get("fps"), "fps"
    run = record.get("run") or {}
    return run.get("images_per_s"), "run images/s" if run.get("images_per_s") is not None else "-"


def row_of(n: int, path: Path, record: dict) -> dict:
    metrics = record.get("metrics") or {}
    fps, kind = fps_of(record)
    return {
        "#": n,
        "time": record.get("time", "")[:19],
        "model": f"{record['model']}/{record.get('variant')}",
        "kind": record["kind"],
        "backend": record.get("backend"),
        "precision": record.get("precision"),
        "bs": record.get("batch_size"),
        "images": (record.get("dataset") or {}).get("num_images", "-"),
        "AP": f"{metrics['AP']:.4f}" if isinstance(metrics.get("AP"), float) else "-",
        "FPS": f"{fps:.1f}" if isinstance(fps, (int, float)) else "-",
        "FPS kind": kind,
        "verdict": record.get("verdict", "-"),
        "record": str(path.resolve()),
    }


def runs_rows(results_dir: str | Path, last: int = 20) -> list[dict]:
    """The newest `last` records under results_dir (recursively), oldest first, numbered from 1."""
    records = _records(Path(results_dir))
    return [row_of(i, p, r) for i, (p, r) in enumerate(records, 1)][-last:]


def print_runs(results_dir: str | Path, last: int = 20) -> int:
    """`scripts/suite runs`: the last records under results_dir as a table; the exit code (0)."""
    rows = runs_rows(results_dir, last)
    if not rows:
        print(f"no result records under {Path(results_dir).resolve()}")
        return 0
    cols = [c for c in rows[0] if c != "record"]
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(f"{c:<{width[c]}}" for c in cols))
    for r in rows:
        print("  ".join(f"{str(r[c]):<{width[c]}}" for c in cols))
    print(f"records under {Path(results_dir).resolve()}; `scripts/suite diff N M` compares two of them")
    return 0


def _load(ref: str, results_dir: str | Path) -> tuple[Path, dict]:
    if ref.isdigit() and not Path(ref).is_file():
        records = _records(Path(results_dir))
        if not 1 <= int(ref) <= len(records):
            raise InputError(f"no record number {ref} (`scripts/suite runs` lists {len(records)})", results_dir)
        return records[int(ref) - 1]
    path = Path(ref)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"cannot read the record ({exc.strerror})", path) from None
    except ValueError:
        raise InputError("not a JSON result record", path) from None
    if not isinstance(data, dict) or "kind" not in data or "model" not in data:
        raise InputError("not a result record of the suite (no kind / model)", path)
    return path, data


SETTINGS = ("model", "variant", "kind", "backend", "device", "precision", "batch_size")


def diff_lines(a: dict, b: dict) -> list[str]:
    """Settings that differ, then every numeric metric of either record with its change."""
    lines = []
    for key in SETTINGS:
        if a.get(key) != b.get(key):
            lines.append(f" {key}: {a.get(key)} -> {b.get(key)}")
    na, nb = (a.get("dataset") or {}).get("num_images"), (b.get("dataset") or {}).get("num_images")
    if na != nb:
        lines.append(f" images: {na} -> {nb} (metrics over different image sets)")
    if (a.get("onnx") or {}).get("sha256") != (b.get("onnx") or {}).get("sha256"):
        lines.append(" onnx: a different model file (sha256)")
    ma, mb = a.get("metrics") or {}, b.get("metrics") or {}
    lines.append(f" {'metric':<18} {'A':>12} {'B':>12} {'B - A':>12} {'change':>8}")
    for k in sorted(set(ma) | set(mb), key=lambda k: (k not in ma, k)):
        va, vb = ma.get(k), mb.get(k)
        if not isinstance(va, (int, float)) and not isinstance(vb, (int, float)):
            continue
        fa = f"{va:.4f}" if isinstance(va, (int, float)) else "-"
        fb = f"{vb:.4f}" if isinstance(vb, (int, float)) else "-"
        delta = rel = ""
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
            delta = f"{vb - va:+.4f}"
            rel = f"{(vb - va) / va * 100:+.1f}%" if va else ""
        lines.append(f" {k:<18} {fa:>12} {fb:>12} {delta:>12} {rel:>8}")
    lines.append(f" verdict: {a.get('verdict')} -> {b.get('verdict')}")
    return lines


def print_diff(ref_a: str, ref_b: str, results_dir: str | Path = "results") -> int:
    """`scripts/suite diff A B`: two records (paths or names under results_dir) side by side, metric by metric."""
    (pa, a), (pb, b) = _load(ref_a, results_dir), _load(ref_b, results_dir)
    print(f"A: {pa.resolve()}\nB: {pb.resolve()}")
    print("\n".join(diff_lines(a, b)))
    return 0
