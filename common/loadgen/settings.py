"""A scenario's settings: MLPerf's rules, then the spec's `loadgen:` section, then the flags -> LoadGen TestSettings.

A full run starts from the MLPerf Inference rules LoadGen carries (its built-in mlperf.conf, read for the object
detection benchmark `retinanet`: 600 s minimum duration, Server p99 bound 100 ms, MultiStream 8 samples per
query and 662 queries, Offline 24576 samples, the official seeds). The short CI mode (`--short`) replaces the
minimums with SHORT's so a scenario takes seconds: LoadGen still judges the run by them, and the record says that
it is not an MLPerf result whatever LoadGen's verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.config.loadgen_spec import SCENARIOS, SETTINGS  # noqa: F401  SCENARIOS: re-exported
from common.errors import ConfigError

MLPERF_BENCHMARK = "retinanet"  # the MLPerf Inference object detection benchmark whose rules a full run takes
MODES = ("performance", "accuracy")
# The short CI mode's minimums: a second of traffic, and as many queries as LoadGen's early-stopping estimate
# needs to call a run valid (SingleStream p90: 64; MultiStream p99: 662; Server p99: ~460 with no query over
# the bound); fewer queries are allowed (--min-query-count) and reported invalid by LoadGen's early stopping.
SHORT = {
    "min_duration_s": 1.0,
    "min_query_count": {"SingleStream": 64, "MultiStream": 662, "Server": 500, "Offline": 64},
}
NOT_MLPERF = (
    "short CI mode: minimum duration and query counts far below MLPerf's rules; LoadGen's verdict is "
    "under these settings only; this is not an MLPerf result"
)
DEFAULT_MAX_WAIT_MS = 2.0


@dataclass(frozen=True)
class LoadgenConfig:
    """What one LoadGen run is asked to do: scenario, mode, the short mode, and settings (SETTINGS' keys) given
    by flags, over the spec's section."""

    scenario: str
    mode: str = "performance"
    short: bool = False
    settings: dict = field(default_factory=dict)  # from flags
    find_peak_qps: bool = False  # Server: search the highest valid QPS
    search_tries: int = 6

    def __post_init__(self):
        if self.scenario not in SCENARIOS:
            raise ConfigError(f"unknown LoadGen scenario {self.scenario!r}; known: {', '.join(SCENARIOS)}")
        if self.mode not in MODES:
            raise ConfigError(f"unknown LoadGen mode {self.mode!r}; known: {', '.join(MODES)}")
        unknown = set(self.settings) - set(SETTINGS)
        if unknown:
            raise ConfigError(f"unknown LoadGen settings {sorted(unknown)}; known: {', '.join(sorted(SETTINGS))}")
        if self.find_peak_qps and self.scenario != "Server":
            raise ConfigError("--find-peak-qps searches the Server scenario's QPS; use --scenario Server")
        if not isinstance(self.search_tries, int) or self.search_tries < 1:
            raise ConfigError(f"--search-tries must be a positive integer, got {self.search_tries!r}")


def resolve(lg_cfg: LoadgenConfig, spec_settings: dict) -> dict:
    """The settings that apply: the short mode's minimums, then the spec's, then the flags'."""
    out: dict[str, Any] = {}
    if lg_cfg.short:
        out = {k: (v[lg_cfg.scenario] if isinstance(v, dict) else v) for k, v in SHORT.items()}
    out.update(spec_settings)
    out.update(lg_cfg.settings)
    out.setdefault("max_wait_ms", DEFAULT_MAX_WAIT_MS if lg_cfg.scenario == "Server" else 0.0)
    if out.get("max_duration_s") and out.get("min_duration_s", 0) > out["max_duration_s"]:
        raise ConfigError(
            f"LoadGen min_duration_s {out['min_duration_s']:g} is above max_duration_s {out['max_duration_s']:g}"
        )
    return out


def to_test_settings(lg, scenario: str, mode: str, settings: dict, n_samples: int):
    """LoadGen's TestSettings for `settings` (resolve()'s answer) over a library of n_samples images."""
    ts = lg.TestSettings()
    ts.FromConfig("", MLPERF_BENCHMARK, scenario, 0)  # "" and 0: only LoadGen's built-in mlperf.conf
    ts.scenario = getattr(lg.TestScenario, scenario)
    ts.mode = lg.TestMode.AccuracyOnly if mode == "accuracy" else lg.TestMode.PerformanceOnly
    s = settings
    ns = lambda ms: int(round(ms * 1e6))  # noqa: E731
    if "target_qps" in s:
        ts.server_target_qps = ts.offline_expected_qps = s["target_qps"]
    if "target_latency_ms" in s:
        ts.server_target_latency_ns = ns(s["target_latency_ms"])
    if "expected_latency_ms" in s:
        ts.single_stream_expected_latency_ns = ts.multi_stream_expected_latency_ns = ns(s["expected_latency_ms"])
    if "samples_per_query" in s:
        ts.multi_stream_samples_per_query = s["samples_per_query"]
    if "min_duration_s" in s:
        ts.min_duration_ms = int(round(s["min_duration_s"] * 1000))
    if "max_duration_s" in s:
        ts.max_duration_ms = int(round(s["max_duration_s"] * 1000))
    if "min_query_count" in s:
        ts.min_query_count = s["min_query_count"]
    if "max_query_count" in s:
        ts.max_query_count = s["max_query_count"]
    # the performance set is the run's images unless asked otherwise (MLPerf's 64 for retinanet assumes its
    # own data set; the suite's may be smaller)
    ts.performance_sample_count_override = min(s.get("performance_sample_count") or n_samples, n_samples)
    for key in ("qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed"):
        if key in s:
            setattr(ts, key, s[key])
    return ts


def effective(ts) -> dict:
    """The TestSettings as the record keeps them."""
    keys = (
        "min_duration_ms",
        "max_duration_ms",
        "min_query_count",
        "max_query_count",
        "server_target_qps",
        "server_target_latency_ns",
        "server_target_latency_percentile",
        "offline_expected_qps",
        "single_stream_expected_latency_ns",
        "single_stream_target_latency_percentile",
        "multi_stream_expected_latency_ns",
        "multi_stream_samples_per_query",
        "multi_stream_target_latency_percentile",
        "performance_sample_count_override",
        "qsl_rng_seed",
        "sample_index_rng_seed",
        "schedule_rng_seed",
    )
    return {k: getattr(ts, k) for k in keys}


def loadgen_config_from_args(args) -> LoadgenConfig:
    """The LoadgenConfig of a parsed `scripts/suite loadgen` command line (its `loadgen` flag group)."""
    from common.config.options import value

    given = {key: value(args, f"lg_{key}") for key in SETTINGS if hasattr(args, f"lg_{key}")}
    return LoadgenConfig(
        scenario=value(args, "lg_scenario"),
        mode=value(args, "lg_mode"),
        short=bool(value(args, "lg_short")),
        settings={k: v for k, v in given.items() if v is not None},
        find_peak_qps=bool(value(args, "lg_find_peak_qps")),
        search_tries=value(args, "lg_search_tries"),
    )
