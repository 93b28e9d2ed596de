import time

import numpy as np
import pytest

from common.harness.timing import NOISY_COV, format_timing, measure, summarize


def test_summary_statistics_match_numpy():
    rng = np.random.default_rng(1)
    samples = rng.uniform(0.0145, 0.0155, size=500)
    st = summarize(samples, batch_size=4)
    ms = samples * 1e3
    assert st.iterations == 500
    assert st.mean_ms == pytest.approx(ms.mean())
    assert st.p50_ms == pytest.approx(np.percentile(ms, 50))
    assert st.p90_ms == pytest.approx(np.percentile(ms, 90))
    assert st.p99_ms == pytest.approx(np.percentile(ms, 99))
    assert st.fps == pytest.approx(4 * 500 / samples.sum())
    assert st.cov == pytest.approx(ms.std(ddof=1) / ms.mean())
    assert not st.noisy


def test_noisy_runs_are_flagged():
    samples = [0.01] * 50 + [0.05] * 5
    st = summarize(samples, 1)
    assert st.cov > NOISY_COV and st.noisy
    assert "too noisy" in format_timing(st)


def test_measure_honours_minimum_iterations_and_duration():
    calls = {"step": 0, "sync": 0}

    def step():
        calls["step"] += 1
        time.sleep(0.001)

    def sync():
        calls["sync"] += 1

    st = measure(step, sync, batch_size=2, warmup_iters=3, warmup_s=0.0, min_iters=20, min_duration_s=0.1)
    assert st.iterations >= 20
    assert st.total_s >= 0.1
    assert calls["step"] >= st.iterations + 3
    assert calls["sync"] >= st.iterations  # the clock is read only after a sync
    st = measure(step, sync, batch_size=1, warmup_iters=0, warmup_s=0.0, min_iters=5, min_duration_s=0.0)
    assert st.iterations == 5
