"""Flags and environment -> one typed, frozen RunConfig. Every flag, its default and its environment variable are
declared once here; `scripts/suite`, `build_engine.py`, `compare.py` and the regression runner subscribe to the
argument groups they need, and `to_flags()` writes options back out for a subprocess.

Environment variables are read only when the command line is parsed (never deep inside a run), only the
namespaced `SUITE_*` ones plus the recipe-compatible names in ENV, and a bad value is a ConfigError naming the
variable (exit 2). A RunConfig built in Python gets exactly the defaults the command line gets.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from common import REPO_ROOT
from common.errors import ConfigError
from common.metric_table import PRECISIONS

EVALUATORS = ("incremental", "faster-coco-eval", "pycocotools")  # common/evaluate/metrics.py ENGINES
MAX_THREADS = 256  # runtime threads: beyond this a typo (--threads 100000) only exhausts memory


@dataclass(frozen=True)
class RunConfig:
    """What one run (accuracy or performance), one engine build or one comparison is asked to do."""

    model: str
    variant: str | None = None  # None: the spec's default_variant
    precision: str = "fp32"
    batch_size: int = 1
    backend: str = "onnxruntime"
    device: str | None = None  # None: the backend's default device
    onnx: str | None = None
    checkpoint: str | None = None  # with `config`: export to ONNX first (cached, common/export/pipeline.py)
    config: str | None = None
    opset: int | None = None
    dataset_dir: str | None = None
    annotation: str | None = None  # None: the spec's evaluation.annotation
    images_dir: str | None = None
    max_images: int | None = None
    results_dir: str = "results"
    detections_out: str | None = None
    evaluator: str | None = None  # None: faster-coco-eval when installed
    record_outputs: str | None = None
    input_cache: str | None = None
    cache_dir: str = str(REPO_ROOT / ".cache" / "engines")
    workers: int | None = None  # None: from the backend's capabilities and the cores (harness/requests.parallelism)
    streams: int | None = None  # None: likewise
    threads: int = 0  # runtime threads; 0 = the runtime's own choice
    progress: bool = True
    warmup_s: float = 1.0
    min_duration_s: float = 5.0
    min_iters: int = 100
    backend_options: dict = field(default_factory=dict)
    calib_dir: str | None = None  # int8: calibration images (never the evaluation set, common/data/calibration.py)
    calib_images: int | None = None  # int8: None = the spec's int8 calib_images (common/runtime/quantize.py), else 32
    resume: bool = True  # pick up the per-batch predictions an interrupted identical run left behind
    checkpoint_s: float = 1.0  # how often finished predictions are saved for resuming (0 = every batch)
    preflight: int = 4  # accuracy: compare with the FP32 reference on this many images first
    shard: str | None = None  # "K/N": only the K-th of N image shards (docs/scale-out.md)
    shard_source: str | None = None  # what set the shard: --shard or the CI variables (SHARD_ENV)
    devices: str | None = None  # accuracy: "0,1,...": one worker process per device (common/harness/devices.py)
    bootstrap: int = 1000  # accuracy: resamples of the stats' intervals (0 = none; evaluate/bootstrap.py)

    def __post_init__(self):
        _check_range("batch size", self.batch_size, 1)
        _check_range("threads", self.threads, 0, MAX_THREADS)
        if not (
            isinstance(self.checkpoint_s, (int, float)) and math.isfinite(self.checkpoint_s) and self.checkpoint_s >= 0
        ):
            raise ConfigError(f"checkpoint interval must be a finite number >= 0, got {self.checkpoint_s!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        if self.shard is not None:
            parse_shard(self.shard)
        if self.devices is not None:
            parse_devices(self.devices)


def _check_range(what: str, value, low: int, high: int | None = None):
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")
        raise ConfigError(f"{what} must be {bound}, got {value!r}")


# ---------------------------------------------------------------------------------------------------- shards

# The CI schedulers' own variables an accuracy run reads for its image shard when --shard is not given
# (docs/scale-out.md): GitLab `parallel:` (1-based index) and Slurm job arrays (any first index and step).
GITLAB_SHARD_ENV = ("CI_NODE_INDEX", "CI_NODE_TOTAL")
SLURM_SHARD_ENV = (
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_STEP",
)
SHARD_ENV = GITLAB_SHARD_ENV + SLURM_SHARD_ENV


def parse_shard(text: str, what: str = "--shard") -> tuple[int, int]:
    """ "K/N" -> (K, N) with 1 <= K <= N; anything else is a ConfigError naming `what`."""
    k_text, sep, n_text = str(text).partition("/")
    try:
        k, n = int(k_text), int(n_text)
    except ValueError:
        k = n = 0
    if not sep or n < 1 or not 1 <= k <= n:
        raise ConfigError(f"{what}={text!r}: expected K/N with 1 <= K <= N (e.g. 2/4)")
    return k, n


def parse_devices(text: str) -> list[int]:
    """ "0,1,3" -> [0, 1, 3]: distinct device indices >= 0."""
    try:
        out = [int(t) for t in str(text).split(",")]
    except ValueError:
        out = [-1]
    if not out or min(out) < 0 or len(set(out)) != len(out):
        raise ConfigError(f"--devices={text!r}: expected distinct device indices >= 0, comma-separated (e.g. 0,1)")
    return out


def _env_int(environ, name: str) -> int | None:
    text = environ.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"${name}={text!r}: expected an integer") from None


def shard_from_environment(environ) -> tuple[str, str] | None:
    """("K/N", source) from the CI scheduler's variables, or None when none is set. GitLab sets CI_NODE_TOTAL=1
    on every job without `parallel:` (no shard); a Slurm array task is (ID - MIN) / STEP + 1 of COUNT (or of
    (MAX - MIN) / STEP + 1). Incomplete or contradictory values are a ConfigError naming the variables."""
    found = []
    index, total = _env_int(environ, "CI_NODE_INDEX"), _env_int(environ, "CI_NODE_TOTAL")
    if index is not None or (total or 1) > 1:
        if index is None or total is None:
            raise ConfigError(
                "$CI_NODE_INDEX and $CI_NODE_TOTAL: GitLab sets both for a `parallel:` job; only "
                f"one is set ({'CI_NODE_INDEX' if index is not None else 'CI_NODE_TOTAL'})"
            )
        found.append(((index, total), f"$CI_NODE_INDEX={index}/$CI_NODE_TOTAL={total} (GitLab parallel)"))
    task = _env_int(environ, "SLURM_ARRAY_TASK_ID")
    if task is not None:
        low, high, count = (_env_int(environ, f"SLURM_ARRAY_TASK_{s}") for s in ("MIN", "MAX", "COUNT"))
        step = _env_int(environ, "SLURM_ARRAY_TASK_STEP") or 1
        span = None if high is None or low is None else (high - low) // step + 1
        tasks = count if span is None else span
        if low is None or tasks is None:
            raise ConfigError(
                "$SLURM_ARRAY_TASK_ID needs $SLURM_ARRAY_TASK_MIN and $SLURM_ARRAY_TASK_MAX or "
                "$SLURM_ARRAY_TASK_COUNT (Slurm sets them for every array task)"
            )
        if span is not None and count is not None and span != count:
            raise ConfigError(
                f"$SLURM_ARRAY_TASK_COUNT={count} contradicts $SLURM_ARRAY_TASK_MIN={low}.."
                f"$SLURM_ARRAY_TASK_MAX={high} (step {step}: {span} tasks); a sparse array "
                "(--array=1,5,9) cannot be a shard index: pass --shard K/N"
            )
        if (task - low) % step:
            raise ConfigError(f"$SLURM_ARRAY_TASK_ID={task} is not MIN {low} + a multiple of STEP {step}")
        found.append(
            (
                ((task - low) // step + 1, tasks),
                f"$SLURM_ARRAY_TASK_ID={task} (Slurm array {low}..{low + (tasks - 1) * step})",
            )
        )
    if not found:
        return None
    if len({kn for kn, _ in found}) > 1:
        raise ConfigError(
            "contradictory shard variables: "
            + " vs ".join(f"{kn[0]}/{kn[1]} from {src}" for kn, src in found)
            + "; unset one or pass --shard K/N"
        )
    (k, n), _ = found[0]
    source = " and ".join(src for _, src in found)
    if n < 1 or not 1 <= k <= n:
        raise ConfigError(f"{source}: shard {k} of {n} is outside 1..{n}")
    return f"{k}/{n}", source


# ---------------------------------------------------------------------------------------------------- parsing


def _int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            value = None
        if value is None or value < low or (high is not None and value > high):
            bound = "a positive integer" if low == 1 else f"an integer >= {low}"
            raise argparse.ArgumentTypeError(
                f"expected {bound}" + (f" <= {high}" if high is not None else "") + f", got {text!r}"
            )
        return value

    parse.__name__ = "integer"
    return parse


def _finite_number(what: str, zero_ok: bool) -> Callable[[str], float]:
    """A parser of finite numbers >= 0 (or > 0): nan, inf and negatives are refused, never taken silently."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            raise argparse.ArgumentTypeError(f"expected {what} {'>=' if zero_ok else '>'} 0, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


_seconds = _finite_number("a number of seconds", zero_ok=True)
_positive_float = _finite_number("a number", zero_ok=False)


positive_int = _int_at_least(1)
nonneg_int = _int_at_least(0)


def _argtype(check: Callable) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            check(text, "")
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None
        return text

    return parse


_shard_text = _argtype(lambda t, w: parse_shard(t, w))
_devices_text = _argtype(lambda t, w: parse_devices(t))


def _backend_flags(group: str) -> list:
    """The flags backends declare for themselves (common/runtime/backends: `Backend.flags`) in this group."""
    from common.runtime.backends import backend_flags

    return [
        Flag((f.name,), f.dest, f.help, _own_type(f.type) if f.type else None, metavar=f.metavar, shown=f.shown)
        for f in backend_flags()
        if f.group == group
    ]


def _own_type(parse: Callable) -> Callable:
    """A backend's own parser as an argparse type: its ValueError becomes the usual one-line usage error."""

    def wrapped(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    wrapped.__name__ = getattr(parse, "__name__", "value")
    return wrapped


@dataclass(frozen=True)
class Flag:
    names: tuple
    dest: str
    help: str
    type: Callable | None = None
    default: object = None
    env: str | None = None
    choices: tuple | None = None
    action: str | None = None  # "store_true" for switches
    metavar: str | None = None
    shown: str | None = None  # the default as --help describes it, where it is resolved later


# The environment variables the suite reads (besides SUITE_SHARED_DATA for the tests): the recipe-compatible names
# of the public IGIE scripts, and the suite's own SUITE_* ones. Nothing else in the environment changes a run.
def _groups() -> dict:
    backends = "onnxruntime (cpu, cuda, tensorrt), igie (MR-V100), tvm (cpu), replay; see `scripts/suite env`"
    return {
        "model": [
            Flag(("--model",), "model", "model folder name under models/, or a model.yaml path"),
            Flag(
                ("--variant",),
                "variant",
                "variant of the model's spec",
                env="SUITE_VARIANT",
                shown="the spec's default_variant",
            ),
            Flag(("--onnx",), "onnx", "the ONNX model", env="ONNX_MODEL", shown="the spec's onnx"),
            Flag(
                ("--checkpoint",),
                "checkpoint",
                "without --onnx: export this checkpoint with the model's export.py first (cached)",
                env="CHECKPOINT",
            ),
            Flag(("--config",), "config", "the checkpoint's model config", env="MODEL_CONFIG"),
            Flag(
                ("--opset",),
                "opset",
                "ONNX opset of a checkpoint export",
                positive_int,
                shown="the spec's export.opset, else the exporter's",
            ),
        ],
        "engine": [
            Flag(("--precision",), "precision", "engine precision", choices=PRECISIONS, default="fp32"),
            Flag(("--bs", "--batch-size"), "batch_size", "batch size of every inference call", positive_int, default=1),
            Flag(("--backend",), "backend", f"runtime: {backends}", env="SUITE_BACKEND", default="onnxruntime"),
            Flag(("--device",), "device", "the backend's device", env="SUITE_DEVICE", shown="the backend's default"),
            Flag(
                ("--threads",),
                "threads",
                f"runtime threads, 0 = the runtime's choice (at most {MAX_THREADS})",
                _int_at_least(0, MAX_THREADS),
                env="SUITE_THREADS",
                default=0,
            ),
            Flag(("--cache-dir",), "cache_dir", "engine cache", env="ENGINE_CACHE_DIR", shown="<repo>/.cache/engines"),
            Flag(
                ("--calib-dir",),
                "calib_dir",
                "int8: calibration images, never the evaluation images (refused when they are)",
                env="CALIB_DIR",
            ),
            Flag(
                ("--calib-images",),
                "calib_images",
                "int8: calibration images used",
                positive_int,
                shown="the spec's int8 calib_images, else 32",
            ),
        ],
        "dataset": [
            Flag(
                ("--dataset-dir",),
                "dataset_dir",
                "COCO dir with images/val2017 (or val2017) and annotations/",
                env="DATASETS_DIR",
            ),
            Flag(
                ("--ann", "--annotation"),
                "annotation",
                "annotation file: a name under <dataset>/annotations or a path",
                env="COCO_ANNOTATION",
                shown="the spec's evaluation.annotation",
            ),
            Flag(("--images-dir",), "images_dir", "images dir, overriding the layout", env="SUITE_IMAGES_DIR"),
        ],
        "output": [
            Flag(("--results-dir",), "results_dir", "where result records go", env="RESULTS_DIR", default="results"),
            Flag(("--no-record",), "no_record", "print only; write no result record", action="store_true"),
            Flag(("--debug",), "debug", "show tracebacks of internal errors", action="store_true"),
            Flag(
                ("--html",),
                "html",
                "also write the self-contained HTML report here (with CI=true: next to the record / report by default)",
                metavar="PATH",
            ),
        ],
        "accuracy": [
            Flag(
                ("--max-images",), "max_images", "evaluate only the first N images (by id)", positive_int, shown="all"
            ),
            Flag(
                ("--workers",),
                "workers",
                "decoding worker processes; 0 = each stream decodes its own next batch",
                nonneg_int,
                env="SUITE_WORKERS",
                shown="from the backend: the cores a host-computing runtime leaves free, up to 4; for an "
                "accelerator every core but one",
            ),
            Flag(
                ("--streams",),
                "streams",
                "inference requests in flight, each at --bs",
                positive_int,
                env="SUITE_STREAMS",
                shown="2 for a host-computing runtime on >= 2 cores, else 1",
            ),
            Flag(
                ("--evaluator",),
                "evaluator",
                "COCO metrics engine (same 12 stats): incremental matches each image while later ones infer",
                choices=EVALUATORS,
                shown="incremental",
            ),
            Flag(
                ("--record-outputs",),
                "record_outputs",
                "also record the raw outputs for the replay backend",
                metavar="DIR",
            ),
            *_backend_flags("accuracy"),
            Flag(
                ("--input-cache",),
                "input_cache",
                "keep the decoded, letterboxed images here (uint8, 3 x H x W "
                "bytes each) as a memory-mapped file shared by every precision and batch size",
                env="INPUT_CACHE_DIR",
                metavar="DIR",
                shown="off",
            ),
            Flag(
                ("--save-detections",),
                "detections_out",
                "also write the detections as COCO results JSON",
                metavar="PATH",
            ),
            Flag(
                ("--preflight",),
                "preflight",
                "first compare the engine with the FP32 reference on N images "
                "and stop (exit 1) when out of tolerance; 0 = off",
                nonneg_int,
                env="SUITE_PREFLIGHT",
                default=4,
                metavar="N",
            ),
            Flag(
                ("--bootstrap",),
                "bootstrap",
                "resamples of the bootstrap over images that gives the 95 %% "
                "intervals of the stats in the record; 0 = none",
                nonneg_int,
                default=1000,
                metavar="N",
            ),
            Flag(("--no-progress",), "no_progress", "no progress bar", action="store_true"),
            Flag(
                ("--checkpoint-interval",),
                "checkpoint_s",
                "save finished predictions for resuming every S seconds; 0 = after every batch",
                _seconds,
                env="SUITE_CHECKPOINT_S",
                default=1.0,
                metavar="S",
            ),
            Flag(
                ("--no-resume",),
                "no_resume",
                "ignore the predictions an interrupted identical run left in <results-dir>/.run-state",
                action="store_true",
            ),
            Flag(
                ("--shard",),
                "shard",
                "only the K-th of N image shards: its detections and a partial record, "
                "joined by `scripts/suite merge` (docs/scale-out.md)",
                _shard_text,
                metavar="K/N",
                shown="$CI_NODE_INDEX/$CI_NODE_TOTAL or the Slurm array task, else all images",
            ),
            Flag(
                ("--devices",),
                "devices",
                "one worker process per device (each its own engine and "
                "$SUITE_GPU_INDEX) on disjoint image shards, one merged record",
                _devices_text,
                metavar="0,1,..",
                env="SUITE_DEVICES",
                shown="one process",
            ),
        ],
        "loadgen": [  # scripts/suite loadgen (common/loadgen/, docs/loadgen.md); over the spec's loadgen: section
            Flag(
                ("--scenario",),
                "lg_scenario",
                "MLPerf LoadGen scenario",
                choices=("SingleStream", "MultiStream", "Server", "Offline"),
            ),
            Flag(
                ("--mode",),
                "lg_mode",
                "LoadGen mode: performance (latency / QPS) or accuracy (every sample once, COCO-evaluated)",
                choices=("performance", "accuracy"),
                default="performance",
            ),
            Flag(
                ("--short",),
                "lg_short",
                "short CI mode: seconds-long minimums, recorded as not an MLPerf result",
                action="store_true",
            ),
            Flag(
                ("--target-qps",),
                "lg_target_qps",
                "Server: Poisson arrival rate; Offline: expected samples/s",
                _positive_float,
                metavar="Q",
            ),
            Flag(
                ("--target-latency-ms",),
                "lg_target_latency_ms",
                "Server: latency bound at its percentile",
                _positive_float,
                metavar="MS",
                shown="MLPerf's 100 for detection",
            ),
            Flag(
                ("--expected-latency-ms",),
                "lg_expected_latency_ms",
                "SingleStream / MultiStream: expected query latency",
                _positive_float,
                metavar="MS",
            ),
            Flag(
                ("--samples-per-query",),
                "lg_samples_per_query",
                "MultiStream: samples per query",
                positive_int,
                shown="8",
            ),
            Flag(
                ("--lg-min-duration",),
                "lg_min_duration_s",
                "LoadGen minimum duration",
                _seconds,
                metavar="S",
                shown="MLPerf's 600, --short 1",
            ),
            Flag(
                ("--lg-max-duration",),
                "lg_max_duration_s",
                "LoadGen maximum duration (0 = none)",
                _seconds,
                metavar="S",
            ),
            Flag(
                ("--min-query-count",), "lg_min_query_count", "LoadGen minimum query count", positive_int, metavar="N"
            ),
            Flag(
                ("--max-query-count",),
                "lg_max_query_count",
                "LoadGen maximum query count (0 = none)",
                nonneg_int,
                metavar="N",
            ),
            Flag(
                ("--performance-sample-count",),
                "lg_performance_sample_count",
                "samples LoadGen loads for performance mode (0 = every image)",
                nonneg_int,
                metavar="N",
            ),
            Flag(
                ("--max-wait-ms",),
                "lg_max_wait_ms",
                "Server: how long a batch waits for more queries",
                _seconds,
                metavar="MS",
                shown="2",
            ),
            Flag(("--qsl-seed",), "lg_qsl_rng_seed", "LoadGen qsl_rng_seed", nonneg_int, metavar="N"),
            Flag(
                ("--sample-index-seed",),
                "lg_sample_index_rng_seed",
                "LoadGen sample_index_rng_seed",
                nonneg_int,
                metavar="N",
            ),
            Flag(("--schedule-seed",), "lg_schedule_rng_seed", "LoadGen schedule_rng_seed", nonneg_int, metavar="N"),
            Flag(
                ("--find-peak-qps",),
                "lg_find_peak_qps",
                "Server: search the highest valid QPS from --target-qps",
                action="store_true",
            ),
            Flag(
                ("--search-tries",),
                "lg_search_tries",
                "Server search: at most this many runs",
                positive_int,
                default=6,
                metavar="N",
            ),
        ],
        "timing": [
            Flag(("--warmup",), "warmup_s", "warm-up seconds before timing", _seconds, default=1.0, metavar="S"),
            Flag(("--min-duration",), "min_duration_s", "minimum measured seconds", _seconds, default=5.0, metavar="S"),
            Flag(("--min-iters",), "min_iters", "minimum measured iterations", positive_int, default=100, metavar="N"),
            *_backend_flags("timing"),
        ],
    }


GROUPS = _groups()
BACKEND_DESTS = frozenset(f.dest for f in _backend_flags("accuracy") + _backend_flags("timing"))
ENV = {f.env: f for group in GROUPS.values() for f in group if f.env}


def _flag(dest: str) -> Flag:
    return next(f for group in GROUPS.values() for f in group if f.dest == dest)


def _add(group, f: Flag, default, needed: bool, env: str | None):
    shown = default if default is not None else (f.shown or "unset")
    note = "; ".join(
        x for x in (f"default: {shown}" if f.action is None and not needed else "", f"${env}" if env else "") if x
    )
    kw: dict[str, Any] = {"dest": f.dest, "help": f"{f.help} ({note})" if note else f.help}
    if f.action:
        kw["action"] = f.action
    else:
        kw.update(default=None, type=f.type, choices=f.choices, metavar=f.metavar)
        if needed:
            kw["required"] = True
    group.add_argument(*f.names, **kw)


def add_groups(parser: argparse.ArgumentParser, *names: str, required=("model",), defaults: dict | None = None):
    """Add the flags of the named groups. `required`: dests that must be given; `defaults`: a command's own
    defaults (compare.py compares fp16 unless told otherwise)."""
    defaults = defaults or {}
    for name in names:
        group = parser.add_argument_group(f"{name} options")
        for f in GROUPS[name]:
            _add(group, f, defaults.get(f.dest, f.default), f.dest in required, f.env)
    parser.set_defaults(_command_defaults={**(parser.get_default("_command_defaults") or {}), **defaults})


def add_flags(
    parser: argparse.ArgumentParser, title: str, *dests: str, defaults: dict | None = None, env: dict | None = None
):
    """Add single flags of the groups under `title`: the regression runner passes these through to every
    case. `defaults` and `env` (dest -> variable name, None: none) are the command's own, where they differ."""
    defaults, env = defaults or {}, env or {}
    group = parser.add_argument_group(title)
    for dest in dests:
        f = _flag(dest)
        _add(group, f, defaults.get(dest, f.default), False, env.get(dest, f.env))
    parser.set_defaults(
        _command_defaults={**(parser.get_default("_command_defaults") or {}), **defaults},
        _command_env={**(parser.get_default("_command_env") or {}), **env},
    )


def _from_env(f: Flag, environ, name: str | None) -> object:
    text = environ.get(name) if name else None
    if text is None or text == "":
        return None
    if f.choices and text not in f.choices:
        raise ConfigError(f"${name}={text!r}: expected one of {', '.join(f.choices)}")
    if f.type is None:
        return text
    try:
        return f.type(text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"${name}={text!r}: {exc}") from None


def value(args: argparse.Namespace, dest: str, environ=None):
    """A flag's value: the command line, else its environment variable, else the command's or the flag's
    default (None where the default is described rather than a value)."""
    given = getattr(args, dest, None)
    if given is not None and given is not False:
        return given
    f = _flag(dest)
    if f.action:
        return bool(given)
    command_env = getattr(args, "_command_env", None) or {}
    env_value = _from_env(
        f, os.environ if environ is None else environ, command_env[dest] if dest in command_env else f.env
    )
    if env_value is not None:
        return env_value
    return getattr(args, "_command_defaults", {}).get(dest, f.default)


def config_from_args(args: argparse.Namespace, environ=None) -> RunConfig:
    """The RunConfig of a parsed command line (flags of the groups the command subscribed to)."""
    present = {f.dest for group in GROUPS.values() for f in group if hasattr(args, f.dest)}
    get = lambda dest: value(args, dest, environ)  # noqa: E731
    kw = {}
    for f in fields(RunConfig):
        if f.name in present:
            v = get(f.name)
            if v is not None:
                kw[f.name] = v
    if "no_progress" in present:
        kw["progress"] = not get("no_progress")
    if "no_resume" in present:
        kw["resume"] = not get("no_resume")
    if "shard" in present:
        if kw.get("shard"):
            try:
                found = shard_from_environment(os.environ if environ is None else environ)
            except ConfigError:  # the flag wins: a broken environment it replaces is no error
                found = None
            kw["shard_source"] = "--shard" + (f" (overrides {found[1]})" if found and found[0] != kw["shard"] else "")
        else:
            found = shard_from_environment(os.environ if environ is None else environ)
            if found:
                kw["shard"], kw["shard_source"] = found
    own = {k: get(k) for k in BACKEND_DESTS if k in present and get(k)}  # the backends' own flags
    if own:
        kw["backend_options"] = own
    return RunConfig(model=kw.pop("model", None) or "", **kw)


def to_flags(cfg: RunConfig, kind: str | None = None) -> list[str]:
    """The command-line flags that reproduce `cfg` in a subprocess (only what differs from the defaults; the
    accuracy and timing groups only for their kind)."""
    base = RunConfig(model=cfg.model)
    skip = {"accuracy": {"timing"}, "performance": {"accuracy"}, "loadgen": {"timing"}}.get(kind or "", set())
    out = ["--model", cfg.model]
    for name, group in GROUPS.items():
        if name in skip or name in ("output", "loadgen"):
            continue
        for f in group:
            if f.dest == "model":
                continue
            if f.dest == "no_progress":
                if not cfg.progress:
                    out.append("--no-progress")
            elif f.dest == "no_resume":
                if not cfg.resume:
                    out.append("--no-resume")
            elif f.dest in BACKEND_DESTS:
                if cfg.backend_options.get(f.dest):
                    out += [f.names[0], str(cfg.backend_options[f.dest])]
            else:
                v = getattr(cfg, f.dest)
                if v is not None and v != getattr(base, f.dest):
                    out += [f.names[0], str(v)]
    if cfg.results_dir != base.results_dir:
        out += ["--results-dir", cfg.results_dir]
    return out
