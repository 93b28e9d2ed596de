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
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common import BOOTSTRAP, REPO_ROOT
from common.ci.html_report import accuracy_markdown, comparisons, regress_page
from common.ci.matrix import Case, case_rules
from common.ci.md_figures import markdown_figures
from common.ci.reports import (
    junit_xml,
    markdown_summary,
    plot_fps_vs_batch,
    plot_history,
    readme_table,
    results_rows,
    text_table,
    update_readme,
)
from common.ci.verdicts import BASELINES_DIR, ERROR, FAILED, FAILING, UNSUPPORTED, FpsRule, judge
from common.config.options import ENV, SHARD_ENV, RunConfig, to_flags
from common.config.specs import load_model
from common.engine_cache import atomic_write_bytes, atomic_write_json
from common.errors import ConfigError, InputError
from common.record.history import append_run, last_good, read_history
from common.record.types import built, check_record, check_verdicts_file
from common.report.html import write_html
from common.runtime.backends import PATH_ENV

# Exit codes of scripts/regress.py (docs/ci-regression.md). When several apply, the first in this order wins:
# a regression is what CI exists to report, an infrastructure error hides results, a gap leaves them incomplete.
EXIT_OK = 0
EXIT_REGRESSION = 1  # a case failed: accuracy or FPS regression (confirmed), a failed target
EXIT_CONFIG = 2  # bad flag, spec, manifest or baseline file: nothing judged
EXIT_INFRA = 3  # a case crashed, timed out, wrote no record or an invalid measurement
EXIT_INCOMPLETE = 4  # an incomplete merge (always); with --strict also a missing baseline / FP32 reference,
# an unsupported cell
EXIT_EMPTY = 5  # nothing was measured: no case, or every case an unsupported cell (an IGIE job on a node


# without the SDK); a green job that ran nothing would hide it. --allow-empty accepts it
# Environment variables the suite's CLI reads as defaults. A case gets everything it needs as flags, so none
# of these may leak into it from the CI job's environment (an ONNX_MODEL there would replace every case's model).
@dataclass
class CaseOptions:
    """Flags passed through to every case's `python -m common.cli` process (paths already absolute)."""

    timeout_s: float = 1800.0
    repeats: int = 3  # performance measurements per case, each in a fresh process
    device: str | None = None
    dataset_dir: str | None = None
    annotation: str | None = None  # overrides the matrix section's hint
    max_images: int | None = None  # overrides the matrix section's cap
    cache_dir: str | None = None
    threads: int = 0
    workers: int = 1
    warmup_s: float | None = None
    min_duration_s: float | None = None
    min_iters: int | None = None
    confirm: bool = True  # re-measure a performance case whose FPS fell below its band
    confirm_rounds: int = 5  # A/B rounds of that re-measurement: enough pairs to estimate its spread


def _write_json(path: Path, data) -> None:
    atomic_write_json(path, data)


def absolute_path(value: str | None, cwd: Path | None = None, only_if_exists: bool = False) -> str | None:
    """A path given on the command line, made absolute against the caller's working directory (cases run from
    the repo root). `only_if_exists`: for values that may also be a bare name (an annotation file name)."""
    if value is None:
        return None
    p = Path(cwd or Path.cwd(), value)
    if only_if_exists and not p.exists() and "/" not in value:
        return value
    return str(p.resolve())


def case_config(case: Case, opts: CaseOptions, results_dir: Path) -> RunConfig:
    """The options of one case's run, everything explicit: nothing in the runner's environment reaches it."""
    kw: dict[str, Any] = {
        "device": opts.device,
        "onnx": case.onnx,
        "checkpoint": None if case.onnx else case.checkpoint,
        "config": None if case.onnx else case.config,
        "dataset_dir": opts.dataset_dir,
        "annotation": opts.annotation or case.annotation,
        "cache_dir": opts.cache_dir,
    }
    if case.kind == "loadgen":
        kw.update(max_images=opts.max_images or case.max_images, workers=opts.workers, progress=False)
    elif case.kind == "accuracy":
        # the performance cases' timed outputs are checked against these detections (common/compare/timed_outputs.py);
        # an image shard's are written by the merge that joins its shards (merge_image_shards)
        kw.update(
            max_images=opts.max_images or case.max_images,
            workers=opts.workers,
            progress=False,
            detections_out=None if case.image_shard else str((results_dir / DETECTIONS).resolve()),
            shard=case.image_shard,
        )
    else:
        kw.update(warmup_s=opts.warmup_s, min_duration_s=opts.min_duration_s, min_iters=opts.min_iters)
    return RunConfig(
        model=case.spec,
        variant=case.variant,
        precision=case.precision,
        batch_size=case.batch_size,
        backend=case.backend,
        results_dir=str(results_dir.resolve()),
        threads=opts.threads,
        **{k: v for k, v in kw.items() if v is not None},
    )


def case_cost(opts: CaseOptions):
    """cost(case) -> expected seconds (common/ci/matrix.py expected_cost) for balancing the nodes: an accuracy
    case's images are its cap, else the images of its annotation file (5000 when it cannot be read here)."""
    from common.ci.matrix import expected_cost
    from common.data.coco import read_annotations, resolve_dataset

    counts: dict = {}

    def images(case: Case) -> int:
        cap = opts.max_images or case.max_images
        ann = opts.annotation or case.annotation
        if ann not in counts:
            try:
                _, path = resolve_dataset(
                    opts.dataset_dir,
                    ann or load_model(case.spec).variant(case.variant).annotation,
                    None if opts.dataset_dir else ".",
                )
                counts[ann] = len(read_annotations(path, polygons=False)["images"])
            except Exception:  # noqa: BLE001 -- only an estimate: the case reports its own dataset error
                counts[ann] = 5000
        return min(cap, counts[ann]) if cap else counts[ann]

    memo: dict = {}

    def cost(case: Case) -> float:
        if case.id not in memo:
            memo[case.id] = expected_cost(
                case,
                images(case) if case.kind == "accuracy" else 0,
                opts.repeats,
                opts.warmup_s if opts.warmup_s is not None else 1.0,
                opts.min_duration_s if opts.min_duration_s is not None else 5.0,
            )
        return memo[case.id]

    return cost


def case_command(case: Case, opts: CaseOptions, results_dir: Path) -> list[str]:
    # a LoadGen case runs the short CI mode (its minimums from the spec's loadgen: section where it sets them)
    scenario = ["--scenario", case.scenario, "--short"] if case.kind == "loadgen" and case.scenario else []
    return [
        sys.executable,
        str(BOOTSTRAP),
        case.kind,
        *scenario,
        *to_flags(case_config(case, opts, results_dir), case.kind),
    ]


def case_env() -> dict:
    """The runner's environment less every variable the suite reads as a default (common/config/options.ENV), the CI
    scheduler's shard variables (SHARD_ENV: the runner shards the matrix itself, a case gets its image shard as a
    flag) and any other SUITE_* setting, except the telemetry's choice of GPU, which changes what is sampled, not
    measured, and the folders of out-of-tree backends, which say which backends exist (the runner's own matrix
    was planned with them)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ENV
        and k not in SHARD_ENV
        and not (k.startswith("SUITE_") and k not in ("SUITE_GPU_INDEX", PATH_ENV))
    }
    return env


def backend_unavailable(backend: str) -> str | None:
    """Why the case's backend cannot run on this host (None when it can, or when it is unknown: the case then
    reports the configuration error itself)."""
    from common.runtime.backends import BACKENDS, backend_class

    if backend not in BACKENDS:
        return None
    try:
        ok, why = backend_class(backend).availability()
    except Exception as exc:  # noqa: BLE001 -- an SDK that fails to import is as unavailable as a missing one
        return f"backend '{backend}' failed to load here ({type(exc).__name__}: {exc})"
    return None if ok else f"backend '{backend}' is unavailable here: {why}"


def cell_unsupported(case: Case, device: str | None) -> str | None:
    """Why the backend cannot run this cell at all, from its capabilities (a precision or device it does not
    have): reported as an unsupported cell, not run into a crash."""
    from common.runtime.backends import BACKENDS, backend_class

    if case.backend not in BACKENDS:
        return None
    why = backend_class(case.backend).capabilities.supports(case.precision, device)
    return f"backend '{case.backend}': {why}" if why else None


def _run_process(cmd: list[str], timeout_s: float, log) -> tuple[int | None, str]:
    """(exit code or None on timeout, combined output). The case runs in its own process group so a timeout
    also ends its decode workers."""
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=case_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
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


def run_case(case: Case, opts: CaseOptions, run_dir: Path, sub: str = "", unavailable: str | None = None) -> dict:
    """Run one case (several processes for a performance case's repeats) and write its outcome file.
    `sub`: a confirmation run of the case, kept next to (never instead of) its first records."""
    results_dir = run_dir / "records" / case.slug / sub if sub else run_dir / "records" / case.slug
    if results_dir.exists():
        shutil.rmtree(results_dir)  # a rerun of a case replaces its records, never mixes with them
    results_dir.mkdir(parents=True)
    log_path = run_dir / "logs" / f"{case.slug}{'.' + sub if sub else ''}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    codes, error, command = [], None, case_command(case, opts, results_dir)
    with open(log_path, "w", encoding="utf-8") as log:
        if unavailable:
            log.write(f"not run: {unavailable}\n")
        for _ in range(0 if unavailable else opts.repeats if case.kind == "performance" else 1):
            left = opts.timeout_s - (time.monotonic() - start)
            code, out = _run_process(command, left, log) if left > 0 else (None, "")
            codes.append(code)
            # 0 = targets held, 1 = a target failed: both measured and wrote a record; anything else did not
            if code not in (0, 1):
                error = _error_text(code, out, opts.timeout_s)
                break
    records = sorted(str(p.relative_to(run_dir)) for p in results_dir.glob("*.json"))
    if unavailable:
        status, error = UNSUPPORTED, unavailable
    else:
        if error is None and not records:
            error = "the case wrote no record"
        status = "ok" if error is None else "error"
    outcome = {
        "case": case.as_dict(),
        "status": status,
        "exit_codes": codes,
        "duration_s": time.monotonic() - start,
        "records": records,
        "log": str(log_path.relative_to(run_dir)),
        "error": error,
        "command": command,
        "threads": opts.threads,
    }
    if not sub:
        _write_json(run_dir / "cases" / f"{case.slug}.json", outcome)
    return outcome


DETECTIONS = "dets/detections.json"  # under records/<case>/: not a record (records are records/<case>/*.json)
RUN_OUTPUTS = ("cases", "records", "logs", "plots", "verdicts.json", "junit.xml", "summary.md", "run.json")


def _clear_run_dir(run_dir: Path) -> None:
    """A run into an existing --out starts from nothing: the previous run's cases must not be reported as this
    one's."""
    for name in RUN_OUTPUTS:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def run_matrix(
    cases: list[Case], opts: CaseOptions, run_dir: Path, run_id: str, shard: str | None = None, echo=print
) -> list[dict]:
    """Run every case into run_dir (emptied first, run.json written before the first case) and return the outcomes;
    a backend that cannot load here, or a cell the device does not support, makes its cases unsupported, not failed."""
    _clear_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(
        run_dir / "run.json",
        {
            "run_id": run_id,
            "shard": shard,
            "cases": [c.id for c in cases],
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    outcomes, availability = [], {}
    for i, case in enumerate(cases, 1):
        if case.backend not in availability:
            availability[case.backend] = backend_unavailable(case.backend)
        echo(f"[{i}/{len(cases)}] {case.id} ...", end="", flush=True)
        o = run_case(case, opts, run_dir, unavailable=cell_unsupported(case, opts.device) or availability[case.backend])
        # "measured", not "ok": the verdict (baselines, references, targets) comes once every case has run
        echo(
            f" {'measured' if o['status'] == 'ok' else o['status']} ({o['duration_s']:.1f} s)"
            + (f": {o['error']}" if o["error"] else "")
        )
        outcomes.append(o)
    return outcomes


def confirm_fps_failures(
    cases: list[Case], opts: CaseOptions, run_dir: Path, ropts: ReportOptions, echo=print
) -> list[str]:
    """Re-measure every performance case whose FPS fell below its band, once, after the whole matrix (so a
    burst of load on the node during the first measurement does not hit both). The verdict fails only when
    both measurements are below the band (verdicts.confirm_fps)."""
    if not opts.confirm:
        return []
    _, verdicts = verdicts_of(run_dir, ropts)
    by_id = {c.id: c for c in cases}
    redo = [
        v["id"]
        for v in verdicts
        if v["case"]["kind"] == "performance"
        and v["status"] == FAILED
        and any(n.startswith("FPS regression") for n in v["notes"])
        and v["id"] in by_id
    ]
    vby_id = {v["id"]: v for v in verdicts}
    for cid in redo:
        case = by_id[cid]
        path = run_dir / "cases" / f"{case.slug}.json"
        outcome = json.loads(path.read_text())
        base_onnx = _baseline_model(vby_id[cid], ropts)
        if base_onnx:
            echo(f"[confirm] {cid}: FPS below the band, A/B/A/B with the baseline's model ...", end="", flush=True)
            a, b, error = _interleaved(case, replace(case, onnx=base_onnx), opts, run_dir, opts.confirm_rounds)
            outcome.update(confirm_records=a, confirm_base_records=b, confirm_error=error)
        else:
            echo(f"[confirm] {cid}: FPS below the band, re-measuring ...", end="", flush=True)
            o = run_case(case, opts, run_dir, sub="confirm")
            outcome.update(confirm_records=o["records"] if o["status"] == "ok" else [], confirm_error=o["error"])
        _write_json(path, outcome)
        echo(f" {'error: ' + outcome['confirm_error'] if outcome.get('confirm_error') else 'done'}")
    return redo


def _baseline_model(v: dict, ropts: ReportOptions) -> str | None:
    """The ONNX the case's baseline was measured with, when it can run now as it ran then: the same runtime
    version (an SDK change is the very thing under test, so the old model on the new SDK would hide it) and
    the file still there with the same content."""
    from common.ci.baselines import Baselines, baseline_key
    from common.engine_cache import file_sha256

    base, _, note = Baselines(ropts.baselines_dir).lookup(
        ropts.device_name or v["device"], v["sdk"], baseline_key(v["case"])
    )
    if note or base is None:
        return None
    onnx = base.get("onnx_path")
    if not onnx or base.get("runtime") != v["sdk"] or not Path(onnx).is_file():
        return None
    try:
        return onnx if file_sha256(onnx) == base.get("onnx_sha256") else None
    except OSError:
        return None


def _interleaved(case: Case, base_case: Case, opts: CaseOptions, run_dir: Path, rounds: int = 5):
    """A/B/A/B...: the case and the baseline's model, alternately, `rounds` times, one process each, so both see
    the same state of the node. Returns (case records, baseline-model records, error), each in run order: the
    i-th of each list form the i-th pair, whose ratios give the re-measurement its own spread
    (verdicts.confirm_fps)."""
    dirs = {k: run_dir / "records" / case.slug / k for k in ("confirm", "confirm_base")}
    for d in dirs.values():
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    log_path = run_dir / "logs" / f"{case.slug}.confirm.log"
    error = None
    recs: dict = {k: [] for k in dirs}
    with open(log_path, "w", encoding="utf-8") as log:
        for _ in range(rounds):
            for key, c in (("confirm", case), ("confirm_base", base_case)):
                before = set(dirs[key].glob("*.json"))
                code, out = _run_process(case_command(c, opts, dirs[key]), opts.timeout_s, log)
                if code not in (0, 1):
                    error = f"{key}: {_error_text(code, out, opts.timeout_s)}"
                    return [], [], error
                recs[key] += sorted(str(p.relative_to(run_dir)) for p in set(dirs[key].glob("*.json")) - before)
    return recs["confirm"], recs["confirm_base"], error


def _read_record(path: Path) -> dict:
    """A result record, checked against its declared type and schema version (RecordError naming the file)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"unreadable result record ({exc})", path) from None
    return check_record(record, path)


def load_outcomes(run_dir: Path) -> list[dict]:
    """The case outcomes of a run directory with their records loaded, sorted by case id."""
    outcomes = []
    for path in sorted((run_dir / "cases").glob("*.json")):
        try:
            o = json.loads(path.read_text())
            dets = run_dir / "records" / Path(o["records"][0]).parent.name / DETECTIONS if o["records"] else None
            o["detections_path"] = str(dets) if dets is not None and dets.is_file() else None
            o["records"] = [_read_record(run_dir / r) for r in o["records"]]
            for key in ("confirm_records", "confirm_base_records"):
                o[key] = [_read_record(run_dir / r) for r in o.get(key) or []]
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise InputError(f"unreadable case outcome or record ({exc})", path) from None
        outcomes.append(o)
    if not outcomes:
        raise ConfigError("no case outcomes (cases/*.json): not a regress run directory", run_dir)
    fields = set(Case.__dataclass_fields__)
    return sorted(outcomes, key=lambda o: Case(**{k: v for k, v in o["case"].items() if k in fields}).order)


def merge_runs(shard_dirs: list[Path], out_dir: Path) -> str:
    """Copy the shards' outcomes, records and logs into out_dir; returns the run id. A case present in two
    shards is a configuration error (the shards were not slices of one matrix). The merged run.json plans every
    case any shard planned and names the shards that are missing (`k/n` never given): report() treats both as
    an incomplete run."""
    seen: dict[str, Path] = {}
    run_ids: list = []
    planned: list = []
    shards: list = []
    for d in shard_dirs:
        meta_path = d / "run.json"
        if not meta_path.is_file():
            raise ConfigError("not a regress run directory (no run.json)", d)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"unreadable run.json ({exc})", meta_path) from None
        run_ids.append(meta["run_id"])
        planned += meta.get("cases", [])
        if meta.get("shard"):
            shards.append(meta["shard"])
        for case_file in sorted((d / "cases").glob("*.json")):
            if case_file.name in seen:
                raise ConfigError(f"case {case_file.stem} is in two shards ({seen[case_file.name]} and {d})")
            seen[case_file.name] = d
    missing_shards = []
    if shards:
        totals = {int(s.split("/")[1]) for s in shards}
        for n in sorted(totals):
            have = {int(s.split("/")[0]) for s in shards if int(s.split("/")[1]) == n}
            missing_shards += [f"{k}/{n}" for k in range(1, n + 1) if k not in have]
        if len(totals) > 1:
            raise ConfigError(f"the shards split different matrices: {', '.join(sorted(set(shards)))}")
    _clear_run_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for d in shard_dirs:
        for sub in ("cases", "records", "logs"):
            if (d / sub).is_dir():
                shutil.copytree(d / sub, out_dir / sub, dirs_exist_ok=True)
    run_id = run_ids[0] if len(set(run_ids)) == 1 else "+".join(sorted(set(run_ids)))
    missing_pieces = merge_image_shards(out_dir)
    planned = [re.sub(r"/images-\d+-of-\d+$", "", cid) for cid in planned]  # an image shard plans its case
    _write_json(
        out_dir / "run.json",
        {
            "run_id": run_id,
            "shard": None,
            "merged_from": [str(d) for d in shard_dirs],
            "shards": sorted(shards),
            "missing_shards": missing_shards,
            "missing_image_shards": missing_pieces,
            "cases": sorted(set(planned)),
        },
    )
    return run_id


def merge_image_shards(run_dir: Path) -> list[str]:
    """Every accuracy case that nodes ran as image shards, joined into the case itself: its shards' detections
    evaluated once (common/harness/merge.py: the unsharded run's 12 stats exactly) into one record, its outcome
    in place of theirs. Returns the image shards that are missing (that case then has no outcome)."""
    from common.harness.merge import merge_shards
    from common.record.results import write_record

    groups: dict[str, list] = {}
    for path in sorted((run_dir / "cases").glob("*.json")):
        o = json.loads(path.read_text())
        if o["case"].get("image_shard"):
            groups.setdefault(re.sub(r"/images-\d+-of-\d+$", "", o["case"]["id"]), []).append((path, o))
    missing = []
    fields = set(Case.__dataclass_fields__)
    for base_id, pieces in sorted(groups.items()):
        m = int(pieces[0][1]["case"]["image_shard"].split("/")[1])
        have = {int(o["case"]["image_shard"].split("/")[0]) for _, o in pieces}
        gone = [f"{base_id}: image shard {j}/{m} was not merged" for j in range(1, m + 1) if j not in have]
        if gone:
            missing += gone
            for path, _ in pieces:  # the case stays without an outcome: completeness() names it
                path.unlink()
            continue
        case = Case(**{**{k: v for k, v in pieces[0][1]["case"].items() if k in fields}, "image_shard": None})
        errors = [f"image shard {o['case']['image_shard']}: {o['error']}" for _, o in pieces if o["status"] != "ok"]
        outcome = {
            "case": case.as_dict(),
            "status": "ok" if not errors else "error",
            "exit_codes": [c for _, o in pieces for c in o["exit_codes"]],
            "duration_s": sum(o["duration_s"] for _, o in pieces),
            "records": [],
            "log": pieces[0][1]["log"],
            "error": "; ".join(errors) or None,
            "command": pieces[0][1]["command"],
            "threads": pieces[0][1].get("threads"),
            "image_shards": [o["case"]["id"] for _, o in pieces],
        }
        if not errors:
            records_dir = run_dir / "records" / case.slug
            record = merge_shards(
                [
                    run_dir / "records" / Case(**{**case.__dict__, "image_shard": o["case"]["image_shard"]}).slug
                    for _, o in pieces
                ],
                detections_out=str(records_dir / DETECTIONS),
            )
            outcome["records"] = [str(write_record(records_dir, record).relative_to(run_dir))]
        _write_json(run_dir / "cases" / f"{case.slug}.json", outcome)
        for path, _ in pieces:
            path.unlink()
    return missing


def unmerged_gaps(run_dir: Path) -> list[str]:
    """What a merged run directory lacks when it has no case outcome at all (every shard that had a case is
    missing): the missing shards; [] when it has outcomes (report() judges it) or none are missing."""
    if any((run_dir / "cases").glob("*.json")):
        return []
    meta = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    return [f"shard {s} was not merged" for s in meta.get("missing_shards", [])] + list(
        meta.get("missing_image_shards", [])
    )


def completeness(run_dir: Path, outcomes: list[dict]) -> list[str]:
    """What a run directory lacks: shards never merged, planned cases without an outcome (a shard stopped by
    SIGTERM, a node that never ran)."""
    meta = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    have = {o["case"]["id"] for o in outcomes}
    gaps = [f"shard {s} was not merged" for s in meta.get("missing_shards", [])]
    gaps += list(meta.get("missing_image_shards", []))
    gaps += [f"case {cid} was planned but has no outcome" for cid in meta.get("cases", []) if cid not in have]
    return gaps


@dataclass
class ReportOptions:
    baselines_dir: str = str(BASELINES_DIR)
    device_name: str | None = None
    rule: FpsRule = field(default_factory=FpsRule)
    history: str | None = None
    update_readmes: str | None = None  # DIR: DIR/<model>/README.md; "": <run dir>/readmes; None: none written
    plots: bool = True
    step_summary: str | None = None  # e.g. $GITHUB_STEP_SUMMARY: the Markdown is appended there too
    strict: bool = False  # missing baselines / FP32 references and unsupported cells fail (exit 4)
    html: str | None = None  # the HTML report (default with CI=true: <run dir>/report.html)
    allow_empty: bool = False  # a run that measured nothing (every cell unsupported) exits 0, not 5


def verdicts_of(run_dir: Path, ropts: ReportOptions) -> tuple[list[dict], list[dict]]:
    """(outcomes, verdicts). An image shard of an accuracy case (a node's part of it) is not judged: the case is,
    once `merge` has joined its shards."""
    outcomes = [o for o in load_outcomes(run_dir) if not o["case"].get("image_shard")]
    rules = {
        (o["case"]["spec"], o["case"]["variant"]): case_rules(o["case"]["spec"], o["case"]["variant"]) for o in outcomes
    }
    return outcomes, judge(outcomes, rules, ropts.baselines_dir, ropts.device_name, ropts.rule)


def exit_code(verdicts: list[dict], incomplete: list[str], strict: bool, allow_empty: bool = False) -> int:
    """The run's exit code from its verdicts: a regression, then an infrastructure error, then a run that measured
    nothing (unless `allow_empty`), then missing cases (or, with `strict`, gaps) each beat a pass."""
    if any(v["status"] == FAILED for v in verdicts):
        return EXIT_REGRESSION
    if any(v["status"] == ERROR for v in verdicts):
        return EXIT_INFRA
    if not allow_empty and all(v["status"] == UNSUPPORTED for v in verdicts):
        return EXIT_EMPTY
    if incomplete or (strict and any(v.get("gaps") for v in verdicts)):
        return EXIT_INCOMPLETE
    return EXIT_OK


def report(run_dir: Path, ropts: ReportOptions, echo=print) -> int:
    """Verdicts and every output of a run directory; returns the exit code (EXIT_*)."""
    meta = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    run_id = meta.get("run_id") or run_dir.name
    outcomes, verdicts = verdicts_of(run_dir, ropts)
    pieces = [o for o in load_outcomes(run_dir) if o["case"].get("image_shard")]
    incomplete = completeness(run_dir, outcomes + pieces)
    code = exit_code(verdicts, incomplete, ropts.strict, ropts.allow_empty)
    for o in pieces:  # a node's image shards: measured here, judged after `merge`
        echo(
            f"{o['case']['id']}: {'measured' if o['status'] == 'ok' else o['status'] + ': ' + str(o['error'])}; "
            "its case is judged once `regress.py merge` joins every image shard"
        )
    if pieces and code in (EXIT_OK, EXIT_EMPTY):
        code = EXIT_INFRA if any(o["status"] != "ok" for o in pieces) else EXIT_OK
    environment = _run_environment(outcomes)
    _write_json(
        run_dir / "verdicts.json",
        built(
            check_verdicts_file,
            {
                "run_id": run_id,
                "verdicts": verdicts,
                "incomplete": incomplete,
                "strict": ropts.strict,
                "exit_code": code,
            },
        ),
    )
    atomic_write_bytes(
        run_dir / "junit.xml", junit_xml(verdicts, f"regress {run_id}", environment, incomplete, ropts.strict)
    )
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
    md = markdown_summary(
        verdicts, run_id, [str(p.relative_to(run_dir)) for p in plots], good, incomplete, ropts.strict, code
    )
    md += accuracy_markdown(verdicts)
    html_path = ropts.html or (run_dir / "report.html" if os.environ.get("CI") == "true" else None)
    compared = comparisons(verdicts, outcomes) if html_path or ropts.plots else []  # ranked once for both
    if ropts.plots:
        md += markdown_figures(verdicts, outcomes, compared, run_dir)
    atomic_write_bytes(run_dir / "summary.md", md.encode())
    if html_path:
        write_html(html_path, regress_page(run_id, verdicts, outcomes, rows, code, compared))
        echo(f"HTML report: {html_path}")
    if ropts.step_summary:
        with open(ropts.step_summary, "a", encoding="utf-8") as f:
            f.write(md)
    if ropts.update_readmes is not None:
        specs = {v["case"]["model"]: v["case"]["spec"] for v in verdicts}
        root = Path(ropts.update_readmes) if ropts.update_readmes else run_dir / "readmes"
        for model, spec_arg in sorted(specs.items()):
            spec = load_model(spec_arg)
            readme = root / model / "README.md"
            update_readme(readme, readme_table(model, groups, run_id), spec.name, seed=spec.path.parent / "README.md")
            echo(f"results table: {readme.resolve()}")
    echo(text_table(verdicts))
    for gap in incomplete:
        echo(f"INCOMPLETE: {gap}")
    if ropts.strict:
        for v in verdicts:
            if v.get("gaps") and v["status"] not in FAILING:
                echo(f"strict: {v['id']}: {', '.join(v['gaps'])}")
    echo(f"reports: {run_dir / 'summary.md'}, {run_dir / 'junit.xml'}")
    echo(f"exit {code}: {EXIT_MEANING[code]}")
    return code


EXIT_MEANING = {
    EXIT_OK: "every case passed",
    EXIT_REGRESSION: "regression (a case failed)",
    EXIT_INFRA: "infrastructure error (a case crashed, timed out or measured invalidly)",
    EXIT_INCOMPLETE: "incomplete (missing shards / outcomes; strict: missing baseline or reference, unsupported cell)",
    EXIT_EMPTY: "nothing was measured: every case was unsupported here (the lines above say why); "
    "--allow-empty accepts such a run",
}


def _run_environment(outcomes: list[dict]) -> dict:
    """Device, runtime version and commit of the run (from its records) for the JUnit properties."""
    out: dict = {}
    for o in outcomes:
        for r in o.get("records") or []:
            for key, val in (
                ("device", r.get("device")),
                ("runtime", (r.get("engine") or {}).get("runtime")),
                ("git_commit", (r.get("environment") or {}).get("git_commit")),
            ):
                if val:
                    out.setdefault(key, set()).add(str(val))
    return {k: ",".join(sorted(v)) for k, v in out.items()}
