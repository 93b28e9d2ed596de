"""Latency measurement: warm-up, then at least a minimum duration AND a minimum iteration count.

The clock is read only after the runner's sync(), so an asynchronous device is timed on finished work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

NOISY_COV = 0.10  # coefficient of variation above which a measurement is flagged as untrustworthy


@dataclass
class TimingStats:
    iterations: int
    batch_size: int
    total_s: float
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cov: float
    fps: float
    noisy: bool
    histogram: dict | None = None  # {'edges_ms': [bins + 1], 'counts': [bins]}: the latencies' distribution

    def as_dict(self) -> dict:
        """The statistics as a record stores them."""
        return asdict(self)


def summarize(samples_s, batch_size: int, noisy_cov: float = NOISY_COV) -> TimingStats:
    """Statistics of per-iteration wall times (seconds); FPS = images per second at this batch size."""
    s = np.asarray(samples_s, np.float64)
    if s.size == 0:
        raise ValueError("no timing samples")
    ms = s * 1e3
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if s.size > 1 else 0.0
    cov = std / mean if mean > 0 else 0.0
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    total = float(s.sum())
    return TimingStats(
        iterations=int(s.size),
        batch_size=batch_size,
        total_s=total,
        mean_ms=mean,
        std_ms=std,
        min_ms=float(ms.min()),
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        max_ms=float(ms.max()),
        cov=cov,
        fps=batch_size * s.size / total if total > 0 else float("inf"),
        noisy=cov > noisy_cov,
        histogram=_histogram(ms),
    )


def _histogram(ms: np.ndarray, bins: int = 40) -> dict:
    """The latencies binned between their 0.5th and 99.5th percentiles (the extremes go to the end bins), for the
    report's histogram; a few hundred bytes in the record whatever the iteration count."""
    lo, hi = (float(v) for v in np.percentile(ms, [0.5, 99.5]))
    if hi <= lo:
        hi = lo + max(abs(lo) * 1e-6, 1e-9)
    counts, edges = np.histogram(np.clip(ms, lo, hi), bins=bins, range=(lo, hi))
    return {"edges_ms": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def measure(
    step: Callable[[], object],
    sync: Callable[[], None],
    batch_size: int,
    warmup_iters: int = 10,
    warmup_s: float = 1.0,
    min_iters: int = 100,
    min_duration_s: float = 5.0,
    max_iters: int = 1_000_000,
    progress: Callable[[str, float, float], None] | None = None,
) -> TimingStats:
    """Time step() until both min_iters and min_duration_s are reached (after warm-up). `progress(phase, done,
    eta_s)`, when given, hears the phase ("warm-up" / "timing"), the share done and the seconds left, at the
    start, about twice a second and at the end (done 1.0, eta 0)."""
    clock = time.perf_counter
    start = clock()
    next_report = start + 0.5
    if progress:
        progress("warm-up", 0.0, warmup_s + min_duration_s)
    n = 0
    while n < warmup_iters or clock() - start < warmup_s:
        step()
        n += 1
    sync()
    samples: list[float] = []
    measured = 0.0  # the minimum duration is of measured (timed) work, not of loop overhead
    while len(samples) < max_iters and (len(samples) < min_iters or measured < min_duration_s):
        t0 = clock()
        step()
        sync()
        samples.append(clock() - t0)
        measured += samples[-1]
        if progress and t0 >= next_report:
            next_report = t0 + 0.5
            per = measured / len(samples)
            left = max(min_duration_s - measured, (min_iters - len(samples)) * per, 0.0)
            progress("timing", measured / (measured + left) if measured + left else 1.0, left)
    if progress:
        progress("timing", 1.0, 0.0)
    return summarize(samples, batch_size)


def console_progress(label: str, enabled: bool = True):
    """A progress(phase, done, eta_s) for measure() that redraws one line on stderr when it is a terminal (a CI
    log gets nothing: it cannot redraw), ending the line when done."""
    import sys

    if not enabled or not sys.stderr.isatty():
        return None

    def show(phase: str, done: float, eta_s: float):
        end = "\n" if done >= 1.0 else ""
        sys.stderr.write(f"\r{label}: {phase} {done * 100:5.1f}%  ETA {eta_s:5.1f} s  {end}")
        sys.stderr.flush()

    return show


def validity_reasons(stats: TimingStats, min_iters: int, min_duration_s: float) -> list[str]:
    """MLPerf's rule: a run that timed fewer iterations or less time than its minimums (a max_iters cap, a
    clock that stopped early) is invalid, not merely noisy: its figure must not be reported as a result."""
    out = []
    if stats.iterations < min_iters:
        out.append(f"invalid performance run: {stats.iterations} timed iterations < the minimum {min_iters}")
    if stats.total_s < min_duration_s - 1e-9:
        out.append(f"invalid performance run: {stats.total_s:.3f} s timed < the minimum duration {min_duration_s:g} s")
    return out


def format_timing(t: TimingStats) -> str:
    """The timing block of a run's output: FPS, latency percentiles, CoV, and a warning when too noisy."""
    lines = [
        f" throughput  {t.fps:10.2f} FPS = fps, the harness figure targets and baselines judge (batch "
        f"{t.batch_size}, {t.iterations} iterations, {t.total_s:.2f} s)",
        f" latency ms  mean {t.mean_ms:.3f}  p50 {t.p50_ms:.3f}  p90 {t.p90_ms:.3f}  p99 {t.p99_ms:.3f}  "
        f"min {t.min_ms:.3f}  max {t.max_ms:.3f}",
        f" CoV         {t.cov * 100:.1f}%",
    ]
    if t.noisy:
        lines.append(
            f" WARNING: CoV {t.cov * 100:.1f}% > {NOISY_COV * 100:.0f}%: this measurement is too noisy to "
            "trust; rerun on an idle machine or raise --min-duration"
        )
    return "\n".join(lines)
