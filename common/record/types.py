"""The declared types of everything the suite writes and reads back: result records, compare reports, verdicts,
baseline entries and history rows. Builders and readers keep plain mappings; these declarations say what a
mapping must hold, and common/record/schema.py checks it on every write and every read (exit 2 naming the file
and the field) and turns it into the JSON Schemas shipped under docs/schemas/.

A field a reader relies on is required; sections only people read (telemetry, environment) are typed loosely.
Unknown keys are allowed, so a newer field is no reason to refuse a record of the same `schema_version`; a record
of another version is refused naming it (there is no older version to migrate from: 1 is the first).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypedDict

from common import SCHEMA_VERSION
from common.errors import RuntimeFailure
from common.metric_table import COCO_STATS, METRICS
from common.record.schema import AnyFloat, Bound, RecordError, check, json_schema, problems

Finite = Annotated[float, Bound()]
NonNegative = Annotated[float, Bound(0)]
Fraction = Annotated[float, Bound(0, 1)]
CocoStat = Annotated[float, Bound(-1, 1)]  # pycocotools writes -1 where a statistic has no ground truth
Count = Annotated[int, Bound(0)]
Positive = Annotated[int, Bound(1)]
Status = Literal["pass", "warn", "fail", "error", "unsupported"]


# --- the result record ----------------------------------------------------------------------------------------


class OnnxRef(TypedDict):
    path: str
    sha256: str | None


class EngineRef(TypedDict):
    path: str
    cache_hit: bool
    runtime: str


class _TargetCheckRequired(TypedDict):
    metric: str
    bound: Literal["min", "max"]
    limit: Finite
    value: AnyFloat | None  # NaN is kept as measured: the check itself says fail
    # not_judged: the run evaluated fewer images than the target declares (`min_images`)
    status: Literal["pass", "fail", "not_applicable", "not_judged"]


class TargetCheck(_TargetCheckRequired, total=False):
    """One threshold of a target against the measured value (common/record/results.check_targets)."""

    why: str  # a not_judged check: "N images < the target's minimum M"


# the metric sections come from the one metric table (common/metric_table.py): a new metric is declared there
AccuracyMetrics = TypedDict("AccuracyMetrics", {name: CocoStat for name in COCO_STATS}, total=False)  # type: ignore[misc]


class _DatasetRequired(TypedDict):
    images_dir: str
    annotation: str
    num_images: Count


class CategoryCoverage(TypedDict, total=False):
    """How many of the evaluated categories got any detection (common/evaluate/metrics.category_coverage)."""

    evaluated: Count
    detected: Count
    with_ground_truth: Count
    detected_with_ground_truth: Count
    warning: str | None


class Dataset(_DatasetRequired, total=False):
    categories: Any
    evaluator: str
    input_cache_hit: bool | None  # None: not known (a record merged from image shards)
    stopped_by: str  # the stage that stopped the run before any metric (the pre-flight)
    category_coverage: CategoryCoverage


class SpecRef(TypedDict, total=False):
    path: str | None
    sha256: str | None
    variant: str


class PreprocessSettings(TypedDict, total=False):
    """The resolved preprocessing the images were fed with (common/data/preprocess.Preprocess and the input size)."""

    height: Positive
    width: Positive
    resize: str
    pad: str
    pad_value: Finite
    color: str
    mean: list[Finite]
    std: list[Finite]
    interpolation: str


# fps and the latencies are always measured; fps_compute / fps_e2e are null where the runtime or the data cannot
# give them (no engine-alone timer, no real images)
_PERFORMANCE_FIELDS = {
    m.name: NonNegative | None if m.fps_kind in ("compute", "end_to_end") else NonNegative
    for m in METRICS
    if m.section == "performance"
}
PerformanceMetrics = TypedDict("PerformanceMetrics", _PERFORMANCE_FIELDS)  # type: ignore[misc]


class Timing(TypedDict, total=False):
    """common/harness/timing.TimingStats; the verdicts read cov, iterations and total_s."""

    iterations: Count
    batch_size: Positive
    total_s: NonNegative
    mean_ms: NonNegative
    std_ms: NonNegative
    min_ms: NonNegative
    p50_ms: NonNegative
    p90_ms: NonNegative
    p99_ms: NonNegative
    max_ms: NonNegative
    cov: NonNegative
    fps: NonNegative
    noisy: bool


class TimingSettings(TypedDict, total=False):
    warmup_s: NonNegative
    min_duration_s: NonNegative
    min_iters: Count
    threads: Count


class OutputComparison(TypedDict, total=False):
    """One output of the candidate against the reference (common/compare/fidelity_judge.tensor_stats)."""

    error: str
    size: Count
    differing: Fraction
    ref_nonfinite: Count
    nan: Count
    inf: Count
    ref_max_abs: AnyFloat
    max_abs_err: AnyFloat
    mean_abs_err: AnyFloat
    max_rel_err: AnyFloat
    mean_rel_err: AnyFloat
    norm_err: AnyFloat
    cosine: AnyFloat


class _CompareReportRequired(TypedDict):
    images: list[int]
    tolerance: dict[str, Any]
    outputs: dict[str, OutputComparison]
    detections: dict[str, Any]
    verdict: Literal["pass", "fail"]
    reasons: list[str]


class CompareReport(_CompareReportRequired, total=False):
    """A candidate against the FP32 reference: the pre-flight's report (a record's `preflight`) and compare.py's
    --json output."""

    fp16_range: dict[str, Any] | None
    localisation: dict[str, Any]
    fix: dict[str, Any]
    model: str
    variant: str
    onnx: str
    onnx_sha256: str | None
    candidate: dict[str, Any]


class _RecordOptional(TypedDict, total=False):
    spec: SpecRef  # absent from records written before they were recorded
    preprocess: PreprocessSettings


class _RecordRequired(_RecordOptional):
    schema_version: int
    kind: Literal["accuracy", "performance", "loadgen", "accuracy-shard"]
    time: str
    model: str
    variant: str
    backend: str
    device: str
    precision: str
    batch_size: Positive
    onnx: OnnxRef
    engine: EngineRef
    targets: list[dict[str, Any]]
    checks: list[TargetCheck]
    verdict: Literal["pass", "fail", "unchecked"]
    reasons: list[str]
    environment: dict[str, Any]


class _AccuracyRequired(_RecordRequired):
    kind: Literal["accuracy"]  # type: ignore[misc]  # narrows the base class's kind
    dataset: Dataset
    metrics: AccuracyMetrics


class AccuracyRecord(_AccuracyRequired, total=False):
    """The result record of an accuracy run (`python -m common.cli accuracy`)."""

    num_detections: Count
    detections_file: str | None
    run: dict[str, Any]
    preflight: CompareReport | None


class _PerformanceRequired(_RecordRequired):
    kind: Literal["performance"]  # type: ignore[misc]  # narrows the base class's kind
    metrics: PerformanceMetrics
    timing: Timing


class PerformanceRecord(_PerformanceRequired, total=False):
    """The result record of a performance run (`python -m common.cli performance`)."""

    input: str
    timing_settings: TimingSettings
    compute: dict[str, Any]
    end_to_end: dict[str, Any]
    fps_definitions: dict[str, str]
    timed_detections: dict[str, Any] | None
    telemetry: dict[str, Any]


class _LoadgenRequired(_RecordRequired):
    kind: Literal["loadgen"]  # type: ignore[misc]  # narrows the base class's kind
    dataset: Dataset
    metrics: dict[str, AnyFloat | None]  # LoadGen's own figures (common/loadgen/logs.metric_values) or AP
    loadgen: dict[str, Any]


class LoadgenRecord(_LoadgenRequired, total=False):
    """The result record of a LoadGen run (`python -m common.cli loadgen`, docs of common/loadgen)."""


class ShardInfo(TypedDict, total=False):
    """Which slice of the images a shard record covers (common/harness/shards.py)."""

    index: Positive
    total: Positive
    source: str
    first: Count
    last: Count
    all_images: Count
    max_images: Positive | None
    ids_sha256: str
    gpu_index: Count | None
    request: str
    detections: str
    detections_sha256: str
    rows: Count


class _AccuracyShardRequired(_RecordRequired):
    kind: Literal["accuracy-shard"]  # type: ignore[misc]  # narrows the base class's kind
    dataset: Dataset
    identity: dict[str, Any]
    shard: ShardInfo


class AccuracyShardRecord(_AccuracyShardRequired, total=False):
    """The partial record of one image shard of an accuracy run: no metrics (`scripts/suite merge` evaluates all
    shards' detections once and writes an AccuracyRecord)."""

    metrics: dict[str, Any]
    num_detections: Count
    nonfinite: dict[str, Count]
    run: dict[str, Any]
    model_arg: str


RECORD_TYPES = {
    "accuracy": AccuracyRecord,
    "performance": PerformanceRecord,
    "loadgen": LoadgenRecord,
    "accuracy-shard": AccuracyShardRecord,
}


# --- verdicts, baselines, history --------------------------------------------------------------------------------


class CaseRef(TypedDict):
    id: str
    model: str
    variant: str
    backend: str
    precision: str
    batch_size: Positive
    kind: Literal["accuracy", "performance", "loadgen"]


class VerdictValues(TypedDict, total=False):
    """The figures a verdict was reached on (JUnit properties, the Markdown table, baseline-update)."""

    AP: CocoStat
    AP50: CocoStat
    images: Count
    fps: NonNegative
    fps_runs: list[NonNegative]
    repeats: Positive
    cov: NonNegative
    cov_across: NonNegative | None
    cov_within: NonNegative
    baseline_fps: NonNegative
    baseline_AP: CocoStat
    baseline_AP50: CocoStat
    tolerance_points: NonNegative
    ratio: AnyFloat
    band: NonNegative
    combined_cov: NonNegative
    confirm_fps: NonNegative
    confirm_ratio: AnyFloat
    ab_baseline_fps: NonNegative


class _VerdictRequired(TypedDict):
    id: str
    case: CaseRef
    status: Status
    values: VerdictValues
    notes: list[str]
    gaps: list[str]


class Verdict(_VerdictRequired, total=False):
    """One case's verdict (common/ci/verdicts.judge), as verdicts.json holds it."""

    duration_s: NonNegative
    device: str
    sdk: str
    git_commit: str | None
    baseline_file: str
    baseline_detections: str  # the baseline's kept detections an accuracy case was paired with


class VerdictsFile(TypedDict):
    run_id: str
    verdicts: list[Verdict]
    incomplete: list[str]
    strict: bool
    exit_code: int


class _Provenance(TypedDict, total=False):
    updated: str
    forced: bool
    onnx_sha256: str | None
    onnx_path: str | None
    runtime: str | None
    threads: Count | None
    timing_settings: TimingSettings | None
    host: str | None
    cpu: str | None
    git_commit: str | None


class _AccuracyEntryRequired(TypedDict):
    AP: Fraction
    images: Positive
    annotation: str


class AccuracyBaselineEntry(_AccuracyEntryRequired, _Provenance, total=False):
    """An accepted accuracy figure: key `model/variant/backend/precision/bsN/accuracy`."""

    AP50: Fraction  # compared when present (baseline-update always writes it)


class _FpsEntryRequired(TypedDict):
    fps: NonNegative


class FpsBaselineEntry(_FpsEntryRequired, _Provenance, total=False):
    """An accepted FPS figure: key `model/variant/backend/precision/bsN`."""

    cov: NonNegative
    repeats: Positive
    fps_runs: list[NonNegative]


class _LoadgenEntryRequired(TypedDict):
    metric: str
    value: NonNegative  # a NaN here would make every ratio against it pass
    scenario: str


class LoadgenBaselineEntry(_LoadgenEntryRequired, _Provenance, total=False):
    """An accepted LoadGen figure: key `model/variant/backend/precision/bsN/loadgen-<scenario>`."""

    qps: NonNegative | None
    p99_ms: NonNegative | None


class _BaselineFileRequired(TypedDict):
    entries: dict[str, AccuracyBaselineEntry | FpsBaselineEntry | LoadgenBaselineEntry]


class BaselineFile(_BaselineFileRequired, total=False):
    """`baselines/<device>/<sdk>.json`; files written before `schema_version` existed are version 1."""

    schema_version: int
    device: str
    sdk: str


class _HistoryFields(TypedDict):
    run_id: str
    case_id: str
    status: Status


class AccuracyHistoryRow(AccuracyRecord, _HistoryFields):
    """A line of the history (common/record/history.py): an accuracy record plus its run and verdict."""


class PerformanceHistoryRow(PerformanceRecord, _HistoryFields):
    """A line of the history: a performance record plus its run and verdict."""


class LoadgenHistoryRow(LoadgenRecord, _HistoryFields):
    """A line of the history: a LoadGen record plus its run and verdict."""


class AccuracyShardHistoryRow(AccuracyShardRecord, _HistoryFields):
    """A line of the history: an image shard's partial record plus its run and verdict."""


HISTORY_TYPES = {
    "accuracy": AccuracyHistoryRow,
    "performance": PerformanceHistoryRow,
    "loadgen": LoadgenHistoryRow,
    "accuracy-shard": AccuracyShardHistoryRow,
}


# --- checks ---------------------------------------------------------------------------------------------------


def _version_problem(data) -> str | None:
    if not isinstance(data, dict):
        return f"expected a mapping, got {type(data).__name__}"
    if "schema_version" not in data:
        return "schema_version: missing"
    v = data["schema_version"]
    if isinstance(v, bool) or not isinstance(v, int):
        return f"schema_version: expected an integer, got {v!r}"
    if v != SCHEMA_VERSION:
        return f"schema_version {v} is not one this suite reads (it reads {SCHEMA_VERSION}; no migration from {v})"
    return None


def _by_kind(data, types: dict, path, what: str):
    why = _version_problem(data)
    if why:
        raise RecordError(f"invalid {what}: {why}", path, field="schema_version")
    tp = types.get(data.get("kind"))
    if tp is None:
        raise RecordError(
            f"invalid {what}: kind: expected one of {', '.join(map(repr, types))}, got {data.get('kind')!r}",
            path,
            field="kind",
        )
    check(data, tp, path, what)
    if data["kind"] == "accuracy" and not data["dataset"].get("stopped_by"):
        missing = [m for m in ("AP", "AP50") if m not in data["metrics"]]
        if missing:
            raise RecordError(f"invalid {what}: metrics.{missing[0]}: missing", path, field=f"metrics.{missing[0]}")
    return data


def check_record(record: dict, path=None) -> dict:
    """A result record of either kind, its schema version first; RecordError naming `path` and the field."""
    return _by_kind(record, RECORD_TYPES, path, "result record")


def check_history_row(row: dict, path=None, line: int | None = None) -> dict:
    """One history line (a record plus run_id, case_id, status)."""
    return _by_kind(row, HISTORY_TYPES, f"{path}:{line}" if line is not None else path, "history row")


def check_verdict(verdict: dict, path=None) -> dict:
    return check(verdict, Verdict, path, "verdict")


def check_verdicts_file(data: dict, path=None) -> dict:
    """verdicts.json of a regression run: every verdict by its declared type."""
    return check(data, VerdictsFile, path, "verdicts file")


def check_compare_report(report: dict, path=None) -> dict:
    """A compare.py report checked against its declared type (the error names `path` and the field)."""
    return check(report, CompareReport, path, "compare report")


def check_baseline_entry(key: str, entry, path=None) -> dict:
    """An entry of a baseline file by its key (common/ci/baselines.baseline_key): `.../accuracy`,
    `.../loadgen-<scenario>`, else an FPS entry."""
    last = key.rsplit("/", 1)[-1]
    tp = (
        AccuracyBaselineEntry
        if last == "accuracy"
        else LoadgenBaselineEntry
        if last.startswith("loadgen-")
        else FpsBaselineEntry
    )
    found = problems(entry, tp, f"entries.{key}")
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise RecordError(f"invalid baseline entry: {found[0]}{more}", path, field=found[0].split(":", 1)[0])
    return entry


def check_baseline_file(data, path=None) -> dict:
    """A whole baseline file: its version (absent: 1), then every entry by its kind."""
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise RecordError("baseline file has no 'entries' mapping", path, field="entries")
    if "schema_version" in data and _version_problem(data):
        raise RecordError(f"invalid baseline file: {_version_problem(data)}", path, field="schema_version")
    for key in ("device", "sdk"):
        if key in data and not isinstance(data[key], str):
            raise RecordError(f"invalid baseline file: {key}: expected a string, got {data[key]!r}", path, field=key)
    for key, entry in data["entries"].items():
        check_baseline_entry(key, entry, path)
    return data


def built(checker, value, *args):
    """`checker(value, *args)` on something the suite itself built, before it is written: a mismatch is the
    suite's own bug (exit 3 naming the field), never the user's input, so it is no RecordError."""
    try:
        return checker(value, *args)
    except RecordError as exc:
        raise RuntimeFailure(f"internal error, nothing written: {exc}") from None


# The shipped schemas: docs/schemas/<name>.json (tests/unit/test_record_types.py fails when one is stale)
SCHEMAS = {
    "accuracy-record": (AccuracyRecord, "Accuracy result record"),
    "performance-record": (PerformanceRecord, "Performance result record"),
    "loadgen-record": (LoadgenRecord, "LoadGen result record"),
    "compare-report": (CompareReport, "Compare report (pre-flight, compare.py --json)"),
    "verdicts": (VerdictsFile, "Verdicts of a regression run (verdicts.json)"),
    "baseline-file": (BaselineFile, "Baseline file (baselines/<device>/<sdk>.json)"),
    "accuracy-shard-record": (AccuracyShardRecord, "Accuracy image-shard record (partial; no metrics)"),
    "history-row": (
        AccuracyHistoryRow | PerformanceHistoryRow | LoadgenHistoryRow | AccuracyShardHistoryRow,
        "History row (one JSON line)",
    ),
}


def schemas() -> dict:
    """{file name: JSON Schema} of every declared type, as shipped under docs/schemas/."""
    out = {}
    for name, (tp, title) in SCHEMAS.items():
        schema = json_schema(tp, title)
        if name.endswith("-record") or name == "history-row":
            schema["description"] = f"schema_version {SCHEMA_VERSION}; numbers are finite (JSON has no NaN)."
        out[f"{name}.json"] = schema
    return out


def write_schemas(out_dir) -> list:
    """Write docs/schemas/*.json (`python -m common.record.types [DIR]`)."""
    import json
    from pathlib import Path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        (out_dir / name).write_text(json.dumps(schema, indent=2) + "\n")
        written.append(out_dir / name)
    return written


if __name__ == "__main__":
    import sys

    from common import REPO_ROOT
    from common.record import types as declared  # the module itself: its hints resolve in its own namespace

    for p in declared.write_schemas(sys.argv[1] if len(sys.argv) > 1 else REPO_ROOT / "docs" / "schemas"):
        print(p)
