"""Matrix runs for CI: every case in its own process with its own timeout, then verdicts and reports.

A run directory holds:
    run.json                 run id, shard, the case ids it was given
    cases/<case>.json        one outcome per case: exit codes, duration, record files, error text
    records/<case>/*.json    the suite's own result records (written by `python -m common.cli`)
    logs/<case>.log          the case's stdout + stderr
    verdicts.json, junit.xml, summary.md, plots/*.png   written by report()
Shard run directories are merged by copying their cases/records/logs into one directory and reporting it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import IMPORT_PATH, REPO_ROOT
from .engine_cache import atomic_write_bytes
from .errors import ConfigError, InputError
from .history import append_run, last_good, read_history
from .matrix import Case, relative_rules
from .reports import (junit_xml, markdown_summary, plot_fps_vs_batch, plot_history, readme_table, results_rows,
                      text_table, update_readme)
from .specs import load_model
from .verdicts import BASELINES_DIR, ERROR, FAILED, FAILING, FpsRule, judge

EXIT_OK, EXIT_REGRESSION, EXIT_CONFIG = 0, 1, 2


@dataclass
class CaseOptions:
    """Flags passed through to every case's `python -m common.cli` process."""
    timeout_s: float = 1800.0
    repeats: int = 3                      # performance measurements per case, each in a fresh process
    device: str | None = None
    dataset_dir: str | None = None
    annotation: str | None = None         # overrides the matrix section's hint
    max_images: int | None = None         # overrides the matrix section's cap
    onnx: dict = field(default_factory=dict)   # model name -> ONNX path
    cache_dir: str | None = None
    threads: int = 0
    workers: int = 1
    warmup_s: float | None = None
    min_duration_s: float | None = None
    min_iters: int | None = None


def _write_json(path: Path, data) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, allow_nan=True) + "\n").encode())


def case_command(case: Case, opts: CaseOptions, results_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "common.cli", case.kind, "--model", case.spec, "--variant", case.variant,
           "--precision", case.precision, "--bs", str(case.batch_size), "--backend", case.backend,
           "--results-dir", str(results_dir), "--threads", str(opts.threads)]
    onnx = case.onnx or opts.onnx.get(case.model)
    pairs = [("--device", opts.device), ("--onnx", onnx), ("--dataset-dir", opts.dataset_dir),
             ("--ann", opts.annotation or case.annotation), ("--cache-dir", opts.cache_dir)]
    if case.kind == "accuracy":
        pairs += [("--max-images", opts.max_images or case.max_images), ("--workers", opts.workers)]
        cmd.append("--no-progress")
    else:
        pairs += [("--warmup", opts.warmup_s), ("--min-duration", opts.min_duration_s),
                  ("--min-iters", opts.min_iters)]
    for flag, value in pairs:
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def _run_process(cmd: list[str], timeout_s: float, log) -> tuple[int | None, str]:
    """(exit code or None on timeout, combined output). The case runs in its own process group so a timeout
    also ends its decode workers."""
    env = dict(os.environ, PYTHONPATH=str(IMPORT_PATH) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=max(timeout_s, 1.0))
        code = proc.returncode
    except subprocess.TimeoutExpired:
        out, code = _stop(proc), None
    except BaseException:
        # Ctrl-C or CI cancelling the runner: the case sits in its own session and would not see it
        _stop(proc)
        raise
    log.write(f"$ {' '.join(cmd)}\n{out}\n[exit {code if code is not None else 'timeout'}]\n")
    log.flush()
    return code, out


def _stop(proc: subprocess.Popen) -> str:
    """SIGTERM the case's process group (the suite writes nothing partial on it), SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.communicate(timeout=10)[0] or ""
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.communicate()[0] or ""
    except ProcessLookupError:
        return proc.communicate()[0] or ""


def _error_text(code: int | None, out: str, timeout_s: float) -> str:
    if code is None:
        return f"timed out after {timeout_s:.0f} s"
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    err = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "")
    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    return f"crashed ({how}): {err[:400]}"


def run_case(case: Case, opts: CaseOptions, run_dir: Path) -> dict:
    """Run one case (several processes for a performance case's repeats) and write its outcome file."""
    results_dir = run_dir / "records" / case.slug
    if results_dir.exists():
        shutil.rmtree(results_dir)       # a rerun of a case replaces its records, never mixes with them
    results_dir.mkdir(parents=True)
    log_path = run_dir / "logs" / f"{case.slug}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    codes, error = [], None
    with open(log_path, "w", encoding="utf-8") as log:
        for _ in range(opts.repeats if case.kind == "performance" else 1):
            left = opts.timeout_s - (time.monotonic() - start)
            code, out = _run_process(case_command(case, opts, results_dir), left, log) if left > 0 else (None, "")
            codes.append(code)
            # 0 = targets held, 1 = a target failed: both measured and wrote a record; anything else did not
            if code not in (0, 1):
                error = _error_text(code, out, opts.timeout_s)
                break
    records = sorted(str(p.relative_to(run_dir)) for p in results_dir.glob("*.json"))
    if error is None and not records:
        error = "the case wrote no record"
    outcome = {"case": case.as_dict(), "status": "ok" if error is None else "error", "exit_codes": codes,
               "duration_s": time.monotonic() - start, "records": records, "log": str(log_path.relative_to(run_dir)),
               "error": error}
    _write_json(run_dir / "cases" / f"{case.slug}.json", outcome)
    return outcome


def run_matrix(cases: list[Case], opts: CaseOptions, run_dir: Path, run_id: str, shard: str | None = None,
               echo=print) -> list[dict]:
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / "run.json", {"run_id": run_id, "shard": shard, "cases": [c.id for c in cases],
                                       "started": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    outcomes = []
    for i, case in enumerate(cases, 1):
        echo(f"[{i}/{len(cases)}] {case.id} ...", end="", flush=True)
        o = run_case(case, opts, run_dir)
        echo(f" {o['status']} ({o['duration_s']:.1f} s)" + (f": {o['error']}" if o["error"] else ""))
        outcomes.append(o)
    return outcomes


def load_outcomes(run_dir: Path) -> list[dict]:
    """The case outcomes of a run directory with their records loaded, sorted by case id."""
    outcomes = []
    for path in sorted((run_dir / "cases").glob("*.json")):
        try:
            o = json.loads(path.read_text())
            o["records"] = [json.loads((run_dir / r).read_text()) for r in o["records"]]
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise InputError(f"unreadable case outcome or record ({exc})", path) from None
        outcomes.append(o)
    if not outcomes:
        raise ConfigError("no case outcomes (cases/*.json): not a regress run directory", run_dir)
    return sorted(outcomes, key=lambda o: Case(**{k: v for k, v in o["case"].items() if k != "id"}).order)


def merge_runs(shard_dirs: list[Path], out_dir: Path) -> str:
    """Copy the shards' outcomes, records and logs into out_dir; returns the run id. A case present in two
    shards is a configuration error (the shards were not slices of one matrix)."""
    seen, run_ids = {}, []
    for d in shard_dirs:
        meta_path = d / "run.json"
        if not meta_path.is_file():
            raise ConfigError("not a regress run directory (no run.json)", d)
        run_ids.append(json.loads(meta_path.read_text())["run_id"])
        for case_file in sorted((d / "cases").glob("*.json")):
            if case_file.name in seen:
                raise ConfigError(f"case {case_file.stem} is in two shards ({seen[case_file.name]} and {d})")
            seen[case_file.name] = d
    out_dir.mkdir(parents=True, exist_ok=True)
    for d in shard_dirs:
        for sub in ("cases", "records", "logs"):
            if (d / sub).is_dir():
                shutil.copytree(d / sub, out_dir / sub, dirs_exist_ok=True)
    run_id = run_ids[0] if len(set(run_ids)) == 1 else "+".join(sorted(set(run_ids)))
    _write_json(out_dir / "run.json", {"run_id": run_id, "shard": None, "merged_from": [str(d) for d in shard_dirs],
                                       "cases": sorted(json.loads(p.read_text())["case"]["id"]
                                                       for p in (out_dir / "cases").glob("*.json"))})
    return run_id


@dataclass
class ReportOptions:
    baselines_dir: str = str(BASELINES_DIR)
    device_name: str | None = None
    rule: FpsRule = field(default_factory=FpsRule)
    history: str | None = None
    update_readmes: bool = False
    plots: bool = True
    step_summary: str | None = None       # e.g. $GITHUB_STEP_SUMMARY: the Markdown is appended there too


def verdicts_of(run_dir: Path, ropts: ReportOptions) -> tuple[list[dict], list[dict]]:
    outcomes = load_outcomes(run_dir)
    rules = {(o["case"]["spec"], o["case"]["variant"]): relative_rules(o["case"]["spec"], o["case"]["variant"])
             for o in outcomes}
    return outcomes, judge(outcomes, rules, ropts.baselines_dir, ropts.device_name, ropts.rule)


def report(run_dir: Path, ropts: ReportOptions, echo=print) -> int:
    """Verdicts and every output of a run directory; returns the exit code (0 pass, 1 regression/failure)."""
    meta = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    run_id = meta.get("run_id") or run_dir.name
    outcomes, verdicts = verdicts_of(run_dir, ropts)
    _write_json(run_dir / "verdicts.json", {"run_id": run_id, "verdicts": verdicts})
    atomic_write_bytes(run_dir / "junit.xml", junit_xml(verdicts, f"regress {run_id}"))
    records_by_id = {o["case"]["id"]: o["records"] for o in outcomes}
    rows = []
    if ropts.history:
        append_run(ropts.history, run_id, verdicts, records_by_id)
        rows = read_history(ropts.history)
    plots = []
    groups = results_rows(verdicts)
    if ropts.plots:
        plots += plot_fps_vs_batch(groups, run_dir / "plots")
        if rows:
            perf = [v["id"] for v in verdicts if v["case"]["kind"] == "performance"]
            acc = [v["id"] for v in verdicts if v["case"]["kind"] == "accuracy"]
            for ids, metric in ((perf, "fps"), (acc, "AP")):
                p = plot_history(rows, ids, metric, run_dir / "plots" / f"history_{metric}.png")
                if p:
                    plots.append(p)
    failing = [v["id"] for v in verdicts if v["status"] in FAILING]
    good = {cid: last_good(rows, cid, before_run=run_id) for cid in failing} if rows else None
    md = markdown_summary(verdicts, run_id, [str(p.relative_to(run_dir)) for p in plots], good)
    atomic_write_bytes(run_dir / "summary.md", md.encode())
    if ropts.step_summary:
        with open(ropts.step_summary, "a", encoding="utf-8") as f:
            f.write(md)
    if ropts.update_readmes:
        specs = {v["case"]["model"]: v["case"]["spec"] for v in verdicts}
        for model, spec_arg in sorted(specs.items()):
            spec = load_model(spec_arg)
            update_readme(spec.path.parent / "README.md", readme_table(model, groups, run_id), spec.name)
    echo(text_table(verdicts))
    echo(f"reports: {run_dir / 'summary.md'}, {run_dir / 'junit.xml'}")
    return EXIT_REGRESSION if any(v["status"] in (FAILED, ERROR) for v in verdicts) else EXIT_OK
