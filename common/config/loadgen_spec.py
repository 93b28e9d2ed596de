"""The `loadgen:` section of a variant: MLPerf LoadGen settings per scenario and targets on LoadGen's results.

    loadgen:
      target_latency_ms: 100          # every scenario (Server's latency bound)
      Server: {target_qps: 20}        # one scenario's own settings, over the common ones
      targets:
        - {scenario: Server, backend: "*", precision: [fp32], min: {qps: 5}, max: {p99_ms: 100}}

Read with no LoadGen installed (a spec is checked on every run): the settings are plain numbers here and become
LoadGen's TestSettings only in common/loadgen/settings.py. Any unknown key or bad value is a ConfigError naming
the file and the field.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from common.errors import ConfigError
from common.metric_table import PRECISIONS

Fail = Callable[[str, str], NoReturn]  # (field, message) -> raises the ConfigError naming the file

SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")
# setting -> (kind, lower bound, whether the bound itself is allowed)
SETTINGS = {
    "target_qps": (float, 0.0, False),  # Server: Poisson arrival rate; Offline: expected samples/s
    "target_latency_ms": (float, 0.0, False),  # Server: the latency bound at its percentile
    "expected_latency_ms": (float, 0.0, False),  # SingleStream / MultiStream: LoadGen's expected latency
    "samples_per_query": (int, 1, True),  # MultiStream: samples per query (MLPerf: 8)
    "min_duration_s": (float, 0.0, True),
    "max_duration_s": (float, 0.0, True),  # 0 = none
    "min_query_count": (int, 1, True),
    "max_query_count": (int, 0, True),  # 0 = none
    "performance_sample_count": (int, 0, True),  # 0 = every image of the run
    "max_wait_ms": (float, 0.0, True),  # Server: how long a batch waits for more queries
    "qsl_rng_seed": (int, 0, True),
    "sample_index_rng_seed": (int, 0, True),
    "schedule_rng_seed": (int, 0, True),
}
# Names a loadgen target may put a threshold on (common/loadgen/logs.py fills them from LoadGen's results).
METRICS = ("qps", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p97_ms", "p99_ms", "p999_ms", "early_stopping_ms")


@dataclass(frozen=True)
class LoadgenTarget:
    scenario: str
    backend: str
    device: str
    precisions: tuple
    batch_sizes: tuple | None
    minimum: dict
    maximum: dict

    def applies(self, scenario: str, backend: str, device: str, precision: str, batch_size: int) -> bool:
        return (
            fnmatch.fnmatch(scenario, self.scenario)
            and fnmatch.fnmatch(backend, self.backend)
            and fnmatch.fnmatch(device, self.device)
            and precision in self.precisions
            and (self.batch_sizes is None or batch_size in self.batch_sizes)
        )

    def as_dict(self) -> dict:
        """The target as the record stores it (precision and batch_size as lists, None = any batch size)."""
        return {"scenario": self.scenario, **target_fields(self)}


def target_fields(target) -> dict:
    """What every kind of target (a spec's accuracy/performance ones, LoadGen's) lists in a record: where it applies
    and its bounds, in JSON types."""
    return {
        "backend": target.backend,
        "device": target.device,
        "precision": list(target.precisions),
        "batch_size": None if target.batch_sizes is None else list(target.batch_sizes),
        "min": target.minimum,
        "max": target.maximum,
    }


@dataclass(frozen=True)
class LoadgenSection:
    common: dict  # settings for every scenario
    scenarios: dict  # scenario -> its own settings
    targets: tuple

    def settings_for(self, scenario: str) -> dict:
        """The settings of one scenario: the common ones, overridden by the scenario's own."""
        return {**self.common, **self.scenarios.get(scenario, {})}

    def targets_for(self, scenario: str, backend: str, device: str, precision: str, batch_size: int) -> list:
        """The targets that apply to a run of this scenario, backend, device, precision and batch size."""
        return [t for t in self.targets if t.applies(scenario, backend, device, precision, batch_size)]


def _settings(raw: dict, fail: Fail, where: str) -> dict:
    out = {}
    for key, value in raw.items():
        kind, low, inclusive = SETTINGS[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and kind is int:
            ok = isinstance(value, int)
        if not ok or value < low or (value == low and not inclusive):
            fail(
                f"{where}.{key}",
                f"expected {'an integer' if kind is int else 'a number'} "
                f"{'>=' if inclusive else '>'} {low:g}, got {value!r}",
            )
        out[key] = kind(value)
    return out


def _target(raw, fail: Fail, where: str) -> LoadgenTarget:
    if not isinstance(raw, dict):
        fail(where, f"expected a mapping, got {raw!r}")
    unknown = sorted(
        set(map(str, raw)) - {"scenario", "backend", "device", "precision", "batch_size", "min", "max", "note"}
    )
    if unknown:
        fail(
            f"{where}.{unknown[0]}",
            "unknown key; known: scenario, backend, device, precision, batch_size, min, max, note",
        )
    scenario = raw.get("scenario", "*")
    if not isinstance(scenario, str) or not any(fnmatch.fnmatch(s, scenario) for s in SCENARIOS):
        fail(f"{where}.scenario", f"{scenario!r} matches no scenario ({', '.join(SCENARIOS)})")
    for key in ("backend", "device"):
        if not isinstance(raw.get(key, "*"), str):
            fail(f"{where}.{key}", f"expected a string, got {raw[key]!r}")
    precision = raw.get("precision")
    precisions = (
        (precision,) if isinstance(precision, str) else tuple(precision) if isinstance(precision, list) else None
    )
    if not precisions or not all(p in PRECISIONS for p in precisions):
        fail(f"{where}.precision", f"expected {', '.join(PRECISIONS)} or a list of them, got {precision!r}")
    batch = raw.get("batch_size")
    batches = (
        None
        if batch is None
        else (batch,)
        if isinstance(batch, int)
        else tuple(batch)
        if isinstance(batch, list)
        else ()
    )
    if batches is not None and (
        not batches or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in batches)
    ):
        fail(f"{where}.batch_size", f"expected a positive integer or a list of them, got {batch!r}")
    bounds = {}
    for bound in ("min", "max"):
        thresholds = raw.get(bound) or {}
        if not isinstance(thresholds, dict):
            fail(f"{where}.{bound}", f"expected a mapping, got {thresholds!r}")
        for metric, limit in thresholds.items():
            if metric not in METRICS:
                fail(f"{where}.{bound}.{metric}", f"unknown metric; known: {', '.join(METRICS)}")
            if not isinstance(limit, (int, float)) or isinstance(limit, bool):
                fail(f"{where}.{bound}.{metric}", f"expected a number, got {limit!r}")
        bounds[bound] = {str(k): float(v) for k, v in thresholds.items()}
    if not bounds["min"] and not bounds["max"]:
        fail(where, "a target needs 'min' or 'max' thresholds")
    return LoadgenTarget(
        scenario=scenario,
        backend=raw.get("backend", "*"),
        device=raw.get("device", "*"),
        precisions=precisions,
        batch_sizes=batches,
        minimum=bounds["min"],
        maximum=bounds["max"],
    )


def read_loadgen_section(raw, path=None, where: str = "loadgen") -> LoadgenSection:
    """The typed `loadgen:` section (None = no settings, no targets); a ConfigError naming the file and field."""

    def fail(field: str, message: str) -> NoReturn:
        raise ConfigError(f"{field}: {message}", path)

    if raw is None:
        return LoadgenSection({}, {}, ())
    if not isinstance(raw, dict):
        fail(where, f"expected a mapping, got {type(raw).__name__}")
    known = sorted(SETTINGS) + list(SCENARIOS) + ["targets"]
    for key in raw:
        if key not in known:
            fail(f"{where}.{key}", f"unknown key; known: {', '.join(known)}")
    common = _settings({k: v for k, v in raw.items() if k in SETTINGS}, fail, where)
    scenarios = {}
    for s in SCENARIOS:
        if raw.get(s) is None:
            continue
        if not isinstance(raw[s], dict):
            fail(f"{where}.{s}", f"expected a mapping of settings, got {raw[s]!r}")
        for key in raw[s]:
            if key not in SETTINGS:
                fail(f"{where}.{s}.{key}", f"unknown setting; known: {', '.join(sorted(SETTINGS))}")
        scenarios[s] = _settings(raw[s], fail, f"{where}.{s}")
    targets = raw.get("targets") or []
    if not isinstance(targets, list):
        fail(f"{where}.targets", f"expected a list, got {targets!r}")
    return LoadgenSection(
        common, scenarios, tuple(_target(t, fail, f"{where}.targets[{i}]") for i, t in enumerate(targets))
    )
