"""Interrupted accuracy runs resume to the same metrics; model problems fail clearly; NaN outputs fail the case;
concurrent runs sharing results dir and engine cache do not corrupt each other."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto

from common import BOOTSTRAP
from common.errors import InputError
from common.harness.runs import RunConfig, run_accuracy
from tiny_detector import make_tiny_detector, tiny_detector_env

from helpers import REPO  # noqa: E402
N_IMAGES = 40


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_detector_env(tmp_path_factory.mktemp("tiny"), N_IMAGES)


def _cfg(env, onnx_path, tmp, **kw):
    return RunConfig(model=str(env["spec"]), onnx=str(onnx_path), dataset_dir=str(env["coco"]),
                     results_dir=str(tmp / "res"), cache_dir=str(tmp / "cache"), workers=0, progress=False,
                     threads=1, **kw)


def _cli(env, results, *extra):
    return [sys.executable, str(BOOTSTRAP), "accuracy", "--model", str(env["spec"]), "--onnx", str(env["slow"]),
            "--dataset-dir", str(env["coco"]), "--results-dir", str(results), "--cache-dir",
            str(env["dir"] / "cache"), "--workers", "0", "--no-progress", "--threads", "1", "--checkpoint-interval", "0", *extra]


def _records(results):
    return [json.loads(p.read_text()) for p in sorted(Path(results).glob("*.json"))]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_same_metrics(env, tmp_path, how):
    ref = run_accuracy(_cfg(env, env["slow"], tmp_path / "ref"))
    assert ref["metrics"]["AP"] > 0, "a zero AP would make the comparison below meaningless"
    results = tmp_path / "res"
    proc = subprocess.Popen(_cli(env, results), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = results / ".run-state"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(state.glob("*/*.npz"))) < 5 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(how)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode in ((-signal.SIGKILL,) if how == signal.SIGKILL else (130,)), err
    if how == signal.SIGTERM:
        assert b"resumes" in err
    done = len(list(state.glob("*/*.npz")))
    assert 5 <= done < N_IMAGES, "the run must be stopped part way"
    assert not _records(results), "no half-written record"
    out = subprocess.run(_cli(env, results), cwd=REPO, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (rec,) = _records(results)
    assert rec["run"]["resumed_images"] >= 5
    assert rec["metrics"] == ref["metrics"] and rec["num_detections"] == ref["num_detections"]
    assert not list(state.glob("*/*.npz")), "state is cleared once the record is written"


def test_nan_outputs_fail_the_case(env, tmp_path):
    ref = run_accuracy(_cfg(env, env["onnx"], tmp_path))
    assert ref["verdict"] == "pass" and ref["metrics"]["AP"] > 0
    rec = run_accuracy(_cfg(env, make_tiny_detector(tmp_path / "nan.onnx", nan=True), tmp_path))
    # the case fails, naming the output and the count (the NaN model has one NaN per image)
    assert rec["verdict"] == "fail" and f"output 'dets' has {N_IMAGES} NaN/Inf values" in rec["reasons"]


@pytest.mark.parametrize("make,match", [
    (lambda p: p, "ONNX model not found"),
    (lambda p: (p.write_bytes(b"\x08\x07garbage"), p)[1], "onnxruntime cannot load it|not a loadable ONNX"),
    (lambda p: make_tiny_detector(p, input_name="images"), "no input 'input' .*images"),
    (lambda p: make_tiny_detector(p, size=32), r"shape \['N', 3, 32, 32\].*\[N, 3, 64, 64\]"),
    (lambda p: make_tiny_detector(p, dtype=TensorProto.UINT8), "tensor\\(uint8\\).*float32"),
])
def test_model_problems(env, tmp_path, make, match):
    path = make(tmp_path / "bad.onnx")
    with pytest.raises(InputError, match=match):
        run_accuracy(_cfg(env, path, tmp_path))


def test_engine_for_another_batch(env, tmp_path):
    fixed = make_tiny_detector(tmp_path / "b1.onnx", batch=1)
    assert run_accuracy(_cfg(env, fixed, tmp_path, max_images=3))["verdict"] == "pass"
    with pytest.raises(InputError, match="batch of 4 for an engine built for batch 1"):
        run_accuracy(_cfg(env, fixed, tmp_path, batch_size=4, max_images=8))


def test_truncated_onnx(env, tmp_path):
    data = env["onnx"].read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as ei:
        run_accuracy(_cfg(env, cut, tmp_path))
    assert str(cut) in str(ei.value)


def test_two_concurrent_runs_share_results_and_cache(env, tmp_path):
    results = tmp_path / "shared"
    procs = [subprocess.Popen(_cli(env, results, "--precision", prec), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for prec in ("fp16", "fp16")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    recs = _records(results)
    assert len(recs) == 2 and recs[0]["metrics"] == recs[1]["metrics"]
    engines = list((env["dir"] / "cache").glob("*.onnx"))
    assert len(engines) == 1 and onnx.load(str(engines[0]))  # one complete engine, built once
    assert not list((env["dir"] / "cache").glob(".*.tmp")) and not list(results.glob(".*.tmp"))


def test_corrupted_cached_engine_is_rebuilt(env, tmp_path):
    first = run_accuracy(_cfg(env, env["onnx"], tmp_path, precision="fp16", max_images=4))
    engine = Path(first["engine"]["path"])
    assert not first["engine"]["cache_hit"] and engine.is_file()
    engine.write_bytes(engine.read_bytes()[:100])  # e.g. a disk filled up or another tool damaged it
    again = run_accuracy(_cfg(env, env["onnx"], tmp_path, precision="fp16", max_images=4))
    assert not again["engine"]["cache_hit"] and again["metrics"] == first["metrics"]
    third = run_accuracy(_cfg(env, env["onnx"], tmp_path, precision="fp16", max_images=4))
    assert third["engine"]["cache_hit"]


def test_graph_reading_thread_ends_with_the_load(env, tmp_path):
    """The graph's inputs are read in a thread while the session is built: joined whether the session loads or
    fails (a damaged model, the session's error first), never left running."""
    import threading
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(InputError, match="onnxruntime cannot load it|not a loadable ONNX"):
        run_accuracy(_cfg(env, bad, tmp_path))
    assert run_accuracy(_cfg(env, env["onnx"], tmp_path, max_images=3))["verdict"] == "pass"
    assert not [t.name for t in threading.enumerate() if t.name.startswith("ort-load-")]
