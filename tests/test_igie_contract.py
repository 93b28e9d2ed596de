"""Contract of the igie backend against a SIMULATED IGIE SDK (tests/sim_igie, on ONNX Runtime): the calls, their
arguments, the static batch with a padded last batch, output order and the engine cache."""
import json
import os

import numpy as np
import pytest

from helpers import REPO, run_script

SIM = REPO / "tests" / "sim_igie"
PERSON350 = "instances_val2017_person_subset350.json"


def _env(log):
    return {"PYTHONPATH": f"{SIM}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "SIM_IGIE_LOG": str(log)}


def _calls(log):
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _args(rtmdet_onnx, shared_data, tmp_path, *extra):
    return ["--backend", "igie", "--onnx", rtmdet_onnx, "--images-dir", shared_data / "coco" / "val2017",
            "--ann", shared_data / "coco" / "annotations" / PERSON350, "--cache-dir", tmp_path / "engines",
            "--results-dir", tmp_path / "results", "--no-progress", *extra]


def test_accuracy_run_through_the_igie_api(rtmdet_onnx, shared_data, tmp_path):
    log = tmp_path / "calls.jsonl"
    args = _args(rtmdet_onnx, shared_data, tmp_path, "--bs", 4, "--max-images", 10)
    res = run_script("models/rtmdet/scripts/infer_rtmdet_fp16_accuracy.sh", *args, env=_env(log))
    assert res.returncode == 0, res.stderr
    calls = _calls(log)
    names = [c["call"] for c in calls]
    imp = next(c for c in calls if c["call"] == "import_model_to_igie")
    assert imp["input_dict"] == {"input": [4, 3, 320, 320]} and imp["backend"] == "igie"
    assert imp["model_path"] == str(rtmdet_onnx)
    tgt = next(c for c in calls if c["call"] == "tvm.target.iluvatar")
    assert tgt["model"] == "MR" and tgt["options"] == "-libs=cudnn,cublas,ixinfer"
    build = next(c for c in calls if c["call"] == "tvm.relay.build")
    assert build["precision"] == "fp16" and build["target"].startswith("iluvatar")
    assert names.index("import_model_to_igie") < names.index("tvm.relay.build") < names.index("lib.export_library") \
        < names.index("tvm.runtime.load_module") < names.index("GraphModule")
    # the pre-flight's 4 images vs the FP32 reference (one call), then 10 images at batch 4: three calls, the
    # last one padded to the compiled batch
    shapes = [c["shape"] for c in calls if c["call"] == "set_input"]
    assert shapes == [[4, 3, 320, 320]] * (1 + 3)
    rec = json.loads(next((tmp_path / "results").glob("*.json")).read_text())
    assert rec["backend"] == "igie" and rec["device"] == "mr-v100" and rec["dataset"]["num_images"] == 10
    assert rec["engine"]["cache_hit"] is False

    # the same ONNX, precision, batch and SDK again: the engine comes from the cache, nothing is compiled
    log.unlink()
    res = run_script("models/rtmdet/scripts/infer_rtmdet_fp16_accuracy.sh", *args, env=_env(log))
    assert res.returncode == 0, res.stderr
    names = [c["call"] for c in _calls(log)]
    assert "tvm.relay.build" not in names and "import_model_to_igie" not in names
    rec2 = sorted((tmp_path / "results").glob("*.json"))
    assert len(rec2) == 2
    latest = [json.loads(p.read_text()) for p in rec2]
    assert {r["engine"]["cache_hit"] for r in latest} == {True, False}
    assert latest[0]["metrics"] == latest[1]["metrics"]

    # and the accuracy agrees with ONNX Runtime's FP16 on the same images and batch size
    ort_args = [a for a in args if a not in ("igie",)]
    ort_args[ort_args.index("--backend") + 1:ort_args.index("--backend") + 1] = ["onnxruntime"]
    res = run_script("models/rtmdet/scripts/infer_rtmdet_fp16_accuracy.sh", *ort_args)
    assert res.returncode == 0, res.stderr
    ort_rec = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*onnxruntime*.json")][0]
    assert abs(ort_rec["metrics"]["AP"] - latest[0]["metrics"]["AP"]) < 0.01


def test_runner_output_order_and_sync(rtmdet_onnx, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SIM))
    monkeypatch.setenv("SIM_IGIE_LOG", str(tmp_path / "log.jsonl"))
    for mod in [m for m in list(__import__("sys").modules) if m == "tvm" or m.startswith("tvm.")]:
        monkeypatch.delitem(__import__("sys").modules, mod)
    import onnxruntime as ort

    from common.backends import get_backend
    from common.backends.base import BuildRequest
    from common.engine_cache import EngineCache, file_sha256
    backend = get_backend("igie")
    req = BuildRequest(rtmdet_onnx, file_sha256(rtmdet_onnx), "fp32", 2, "input", (3, 320, 320),
                       EngineCache(tmp_path / "c"), {})
    engine, hit = backend.build(req)
    runner = backend.load(engine, req)
    x = np.random.default_rng(0).standard_normal((1, 3, 320, 320)).astype(np.float32)
    got = runner.infer(x)
    ref = ort.InferenceSession(str(rtmdet_onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    assert list(got) == ["dets", "labels"]
    np.testing.assert_allclose(got["dets"], ref[0], rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(got["labels"], ref[1])
    runner.sync()
    assert runner.device.syncs == 1
    assert len(runner.device_time(number=2, repeat=3)) == 3


def test_unavailable_sdk_is_a_clear_configuration_error(rtmdet_onnx, shared_data, tmp_path):
    res = run_script("models/rtmdet/scripts/infer_rtmdet_fp16_accuracy.sh",
                     *_args(rtmdet_onnx, shared_data, tmp_path, "--max-images", 2), env={"PYTHONPATH": ""})
    assert res.returncode == 2
    assert "backend 'igie' is unavailable" in res.stderr and "Traceback" not in res.stderr
