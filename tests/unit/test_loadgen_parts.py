"""The LoadGen layer's parts that need no LoadGen: the spec's loadgen: section (strict), the settings' precedence,
reading LoadGen's detail log, and the batching SUT driven by a fake LoadGen."""
from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from common.config.loadgen_spec import read_loadgen_section
from common.errors import ConfigError
from common.loadgen import logs
from common.loadgen.settings import SHORT, LoadgenConfig, resolve
from common.loadgen.sut import BatchingSUT, SampleLibrary


def test_section_reads_settings_per_scenario_and_targets():
    sec = read_loadgen_section({"target_latency_ms": 100, "Server": {"target_qps": 20, "max_wait_ms": 1},
                                "targets": [{"scenario": "Server", "backend": "igie", "precision": ["fp16"],
                                             "min": {"qps": 10}, "max": {"p99_ms": 100}}]})
    assert sec.settings_for("Server") == {"target_latency_ms": 100.0, "target_qps": 20.0, "max_wait_ms": 1.0}
    assert sec.settings_for("Offline") == {"target_latency_ms": 100.0}
    assert len(sec.targets_for("Server", "igie", "mr-v100", "fp16", 8)) == 1
    assert not sec.targets_for("Offline", "igie", "mr-v100", "fp16", 8)
    assert not sec.targets_for("Server", "onnxruntime", "cpu", "fp16", 8)


@pytest.mark.parametrize("raw, field", [
    ({"target_qsp": 1}, "loadgen.target_qsp"),
    ({"Server": {"target_qps": 0}}, "loadgen.Server.target_qps"),
    ({"Server": {"min_query_count": 1.5}}, "loadgen.Server.min_query_count"),
    ({"Servr": {}}, "loadgen.Servr"),
    ({"targets": [{"scenario": "Serv*x", "precision": "fp32", "min": {"qps": 1}}]}, "loadgen.targets[0].scenario"),
    ({"targets": [{"precision": "fp32", "min": {"fps": 1}}]}, "loadgen.targets[0].min.fps"),
    ({"targets": [{"precision": "fp32"}]}, "loadgen.targets[0]"),
    ({"targets": [{"precision": "fp32", "min": {"qps": 1}, "scenarios": "Server"}]}, "loadgen.targets[0].scenarios"),
])
def test_section_mistakes_name_the_field(raw, field, tmp_path):
    with pytest.raises(ConfigError) as info:
        read_loadgen_section(raw, tmp_path / "model.yaml")
    assert field in str(info.value) and "model.yaml" in str(info.value)


def test_a_spec_with_a_bad_loadgen_section_fails_at_load(tmp_path):
    from common.config.specs import MODELS_DIR, load_spec
    text = (MODELS_DIR / "rtmdet" / "model.yaml").read_text().replace(
        "    fidelity:                      # FP16", "    loadgen: {Offline: {target_qps: -3}}\n"
        "    fidelity:                      # FP16", 1)
    path = tmp_path / "model.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"variants\.nano-person\.loadgen\.Offline\.target_qps"):
        load_spec(path)


def test_flags_over_spec_over_short_mode():
    cfg = LoadgenConfig("Server", short=True, settings={"target_qps": 7.0})
    s = resolve(cfg, {"target_qps": 3.0, "min_duration_s": 2.0})
    assert s["target_qps"] == 7.0 and s["min_duration_s"] == 2.0
    assert s["min_query_count"] == SHORT["min_query_count"]["Server"] and s["max_wait_ms"] > 0
    assert "min_duration_s" not in resolve(LoadgenConfig("Offline"), {})   # a full run keeps MLPerf's minimums
    with pytest.raises(ConfigError, match="above max_duration_s"):
        resolve(LoadgenConfig("Offline", settings={"min_duration_s": 5.0, "max_duration_s": 1.0}), {})
    with pytest.raises(ConfigError, match="--find-peak-qps"):
        LoadgenConfig("Offline", find_peak_qps=True)


def _mllog(key, value, error=False):
    return ":::MLLOG " + json.dumps({"key": key, "value": value, "metadata": {"is_error": error}})


def test_detail_log_results_say_why_a_run_is_invalid(tmp_path):
    lines = [_mllog("result_validity", "INVALID"), _mllog("result_perf_constraints_met", False),
             _mllog("result_min_duration_met", True), _mllog("result_min_queries_met", True),
             _mllog("early_stopping_met", True), _mllog("result_invalid_reason", ""),
             _mllog("result_completed_samples_per_sec", 99.5), _mllog("result_99.00_percentile_latency_ns", 12_500_000),
             _mllog("error_runtime", "Ending early", error=True), "noise that is not a log line"]
    (tmp_path / logs.DETAIL).write_text("\n".join(lines))
    res = logs.results(logs.read_detail(tmp_path), "Server")
    assert not res["valid"] and res["qps"] == 99.5 and res["p99_ms"] == 12.5
    assert any("latency bound" in r for r in res["reasons"]) and "error_runtime: Ending early" in res["reasons"]
    assert logs.metric_values(res)["p99_ms"] == 12.5


class _FakeLoadgen:
    """QuerySamplesComplete and QuerySampleResponse as LoadGen's: records which ids were answered."""

    def __init__(self):
        self.answered, self.lock = [], threading.Lock()
        self.done = threading.Event()
        self.expect = 0

    def complete(self, responses):
        with self.lock:
            self.answered += [r[0] for r in responses]
            if len(self.answered) >= self.expect:
                self.done.set()

    @staticmethod
    def response(sample_id, rows):
        return (sample_id, None if rows is None else rows.tobytes())


def _library(n=10):
    return SampleLibrary(np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1), np.zeros((n, 6)),
                         np.arange(100, 100 + n))


def _samples(ids):
    return [SimpleNamespace(id=1000 + i, index=i) for i in ids]


def test_sut_batches_up_to_the_batch_size_and_answers_every_sample():
    fake, seen = _FakeLoadgen(), []
    gate = threading.Event()

    def infer(x, ids):
        gate.wait(10)        # the first batch is held until every sample is queued: batches are then full
        seen.append((x[:, 0, 0, 0].tolist(), ids.tolist()))
        return {"n": len(ids)}

    sut = BatchingSUT(_library(), [infer], lambda out, meta: [np.ones((1, 6), np.float32)] * len(meta), 4,
                      fake.complete, fake.response, log_data=True)
    fake.expect = 9
    sut.issue_queries(_samples([0]))
    sut.issue_queries(_samples(range(1, 9)))
    gate.set()
    assert fake.done.wait(10)
    sut.close()
    assert sorted(fake.answered) == [1000 + i for i in range(9)]
    assert [len(ids) for _, ids in seen] in ([1, 4, 4], [4, 4, 1])
    assert all(x == [i - 100 for i in ids] for x, ids in seen)   # each sample's own input and image id
    assert sut.overhead()["samples"] == 9


def test_server_batch_waits_at_most_max_wait_for_more_samples():
    fake, sizes = _FakeLoadgen(), []
    t = [0.0]
    worker_looked = threading.Event()
    main = threading.current_thread()

    def clock():   # the fake time; says when the worker has first read it (it holds sample 0 by then)
        if threading.current_thread() is not main:
            worker_looked.set()
        return t[0]

    sut = BatchingSUT(_library(), [lambda x, ids: sizes.append(len(ids)) or {}], lambda o, m: [], 4,
                      fake.complete, fake.response, max_wait_s=0.5, clock=clock)
    fake.expect = 2
    sut.issue_queries(_samples([0]))
    assert worker_looked.wait(10)       # the worker took up sample 0 and is waiting (or, if it did not wait, sent it)
    sut.issue_queries(_samples([1]))    # arrives within the wait: joins the first batch
    t[0] = 1.0                           # the wait is over: the batch of 2 goes out, not full
    with sut._cond:
        sut._cond.notify_all()
    assert fake.done.wait(10)
    sut.close()
    assert sizes == [2]


def test_a_failing_runner_answers_every_outstanding_sample_and_keeps_the_error():
    fake = _FakeLoadgen()

    def infer(x, ids):
        raise RuntimeError("device lost")

    sut = BatchingSUT(_library(), [infer], lambda o, m: [], 2, fake.complete, fake.response)
    fake.expect = 5
    sut.issue_queries(_samples(range(5)))
    assert fake.done.wait(10)
    sut.issue_queries(_samples([5]))     # after the failure: answered at once, never queued
    sut.close()
    assert sorted(fake.answered) == [1000 + i for i in range(6)]
    assert isinstance(sut.error, RuntimeError)


def test_without_loadgen_the_command_says_how_to_install_it(monkeypatch):
    """No mlcommons-loadgen: a ConfigError (exit 2) naming the optional layer, never an ImportError traceback."""
    import sys

    from common.harness.loadgen_run import import_loadgen
    monkeypatch.setitem(sys.modules, "mlperf_loadgen", None)   # import of it raises ImportError
    with pytest.raises(ConfigError, match="requirements-loadgen.txt") as info:
        import_loadgen()
    assert info.value.exit_code == 2
