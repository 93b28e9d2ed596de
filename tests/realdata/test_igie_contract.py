"""Contract of the igie backend against a SIMULATED IGIE SDK (tests/sim_igie, on ONNX Runtime): the calls, their
arguments, the static batch with a padded last batch, output order and the engine cache."""
import json
import os
import sys

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


@pytest.mark.slow
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
    ort_args = [a for a in args if a not in ("igie",)] + ["--preflight", 0]   # the AP is compared, not the pre-flight
    ort_args[ort_args.index("--backend") + 1:ort_args.index("--backend") + 1] = ["onnxruntime"]
    res = run_script("models/rtmdet/scripts/infer_rtmdet_fp16_accuracy.sh", *ort_args)
    assert res.returncode == 0, res.stderr
    ort_rec = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*onnxruntime*.json")][0]
    assert abs(ort_rec["metrics"]["AP"] - latest[0]["metrics"]["AP"]) < 0.01


def _tvm_modules() -> list:
    return [m for m in sys.modules if m == "tvm" or m.startswith("tvm.")]


@pytest.fixture()
def sim_sdk(tmp_path, monkeypatch):
    """The simulated IGIE SDK imported in this process, for one test: afterwards none of its modules stays in
    sys.modules (a later `import tvm` in the same worker must find the real package again)."""
    monkeypatch.syspath_prepend(str(SIM))
    monkeypatch.setenv("SIM_IGIE_LOG", str(tmp_path / "log.jsonl"))
    for mod in _tvm_modules():
        monkeypatch.delitem(sys.modules, mod)
    yield
    for mod in _tvm_modules():       # before monkeypatch puts the real ones back
        del sys.modules[mod]


def test_runner_output_order_and_sync(rtmdet_onnx, tmp_path, sim_sdk):
    import onnxruntime as ort

    from common.runtime.backends import get_backend
    from common.runtime.backends.base import BuildRequest
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
    assert len(runner.device_time(x, number=2, repeat=3)) == 3


def test_unavailable_sdk_is_a_clear_configuration_error(rtmdet_onnx, shared_data, tmp_path):
    res = run_script("models/rtmdet/scripts/infer_rtmdet_fp16_accuracy.sh",
                     *_args(rtmdet_onnx, shared_data, tmp_path, "--max-images", 2), env={"PYTHONPATH": ""})
    assert res.returncode == 2
    assert "backend 'igie' is unavailable" in res.stderr and "Traceback" not in res.stderr


# ---- INT8: calibration images through IGIE's quantization API (simulated), never the evaluation set ----

def _calib_images(folder, n=5, seed=0):
    """Calibration JPEGs that are not evaluation images: seeded scenes of coloured shapes on noise."""
    import cv2
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(0, 256, (240 + 40 * i, 320, 3), dtype=np.uint8)
        for _ in range(4):
            x, y = (int(v) for v in rng.integers(0, 200, 2))
            cv2.rectangle(img, (x, y), (x + 60, y + 90), tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
        cv2.imwrite(str(folder / f"calib_{i:03d}.jpg"), img)
    return folder


def _build(rtmdet_onnx, shared_data, cache, calib, log, *extra):
    import subprocess
    import sys
    cmd = [sys.executable, str(REPO / "scripts" / "build_engine.py"), "--model", "rtmdet", "--onnx", str(rtmdet_onnx),
           "--backend", "igie", "--precision", "int8", "--bs", "2", "--cache-dir", str(cache),
           "--images-dir", str(shared_data / "coco" / "val2017"),
           "--ann", str(shared_data / "coco" / "annotations" / PERSON350), "--json",
           *(["--calib-dir", str(calib)] if calib else []), *map(str, extra)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **_env(log)})


def test_int8_build_is_the_vendor_flow_on_a_quantised_onnx(rtmdet_onnx, shared_data, tmp_path):
    """INT8 as Iluvatar's recipes do it: ONNX Runtime quantises the ONNX on calibration images at batch 1, and
    that quantised ONNX goes through the same import and relay.build(precision="int8"); no relay.quantize."""
    calib = _calib_images(tmp_path / "calib", n=3)
    log = tmp_path / "calls.jsonl"
    res = _build(rtmdet_onnx, shared_data, tmp_path / "engines", calib, log, "--calib-images", 3)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["cache"] == "miss" and info["calibration"]["num_images"] == 3
    calls = _calls(log)
    names = [c["call"] for c in calls]
    assert not any(n.startswith("relay.quantize") for n in names)
    imp = next(c for c in calls if c["call"] == "import_model_to_igie")
    assert imp["model_path"] != str(rtmdet_onnx) and imp["input_dict"] == {"input": [2, 3, 320, 320]}
    graph = next(c for c in calls if c["call"] == "tvm.relay.build.graph")
    assert graph["quantised"] is True and graph["opset"] >= 13      # per-channel QDQ raised the opset
    assert next(c for c in calls if c["call"] == "tvm.relay.build")["precision"] == "int8"
    # export_library picks the format by the suffix: the temporary name still ends in .so
    assert next(c for c in calls if c["call"] == "lib.export_library")["path"].endswith(".so")
    assert [p for p in (tmp_path / "engines").iterdir() if ".tmp" in p.name] == []

    log.unlink()
    again = _build(rtmdet_onnx, shared_data, tmp_path / "engines", calib, log, "--calib-images", 3)
    assert json.loads(again.stdout)["cache"] == "hit" and "tvm.relay.build" not in str(_calls(log))
    # other calibration images are another engine
    (calib / "calib_002.jpg").unlink()
    _calib_images(tmp_path / "other", n=1, seed=7)
    (tmp_path / "other" / "calib_000.jpg").rename(calib / "calib_002.jpg")
    other = json.loads(_build(rtmdet_onnx, shared_data, tmp_path / "engines", calib, log,
                              "--calib-images", 3).stdout)
    assert other["cache"] == "miss" and other["engine"] != info["engine"]


def test_int8_igie_runs_the_same_quantised_onnx_as_onnxruntime(rtmdet_onnx, shared_data, tmp_path):
    """The same quantised ONNX through IGIE (simulated) and ONNX Runtime: the same AP."""
    calib = _calib_images(tmp_path / "calib", n=3)
    recs = {}
    for backend in ("igie", "onnxruntime"):
        log = tmp_path / f"{backend}.jsonl"
        args = _args(rtmdet_onnx, shared_data, tmp_path, "--bs", 2, "--max-images", 6, "--preflight", 0)
        args[1] = backend
        res = run_script("scripts/suite", "accuracy", "--model", "rtmdet", "--precision", "int8", "--calib-dir", calib,
                         "--calib-images", 3, *args, env=_env(log))
        assert res.returncode in (0, 1), res.stderr
        rec = json.loads(next((tmp_path / "results").glob(f"*_{backend}_*.json")).read_text())
        assert rec["precision"] == "int8" and rec["backend"] == backend
        recs[backend] = rec
    assert recs["igie"]["metrics"]["AP"] == pytest.approx(recs["onnxruntime"]["metrics"]["AP"], abs=1e-6)
    assert recs["igie"]["metrics"]["AP50"] == pytest.approx(recs["onnxruntime"]["metrics"]["AP50"], abs=1e-6)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """One engine cache for the tests whose faults are planted at run time, not in the engine."""
    return tmp_path_factory.mktemp("igie-engines")


@pytest.mark.parametrize("fault", ["wrong_shape", "wrong_shape_labels", "old_ndarray"])
def test_igie_outputs_checked_against_the_onnx(rtmdet_onnx, shared_data, tmp_path, engines, fault):
    """An engine output whose shape is not the ONNX's is refused (exit 3, naming the output); outputs of older
    SDKs' NDArray (asnumpy() only) are read."""
    log = tmp_path / "calls.jsonl"
    env = _env(log)
    env.update({"wrong_shape": {"SIM_IGIE_BAD_OUTPUT_SHAPE": "0"}, "wrong_shape_labels": {"SIM_IGIE_BAD_OUTPUT_SHAPE": "1"},
                "old_ndarray": {"SIM_IGIE_NDARRAY": "old"}}[fault])
    res = run_script("models/rtmdet/scripts/infer_rtmdet_fp16_accuracy.sh",
                     *_args(rtmdet_onnx, shared_data, tmp_path, "--bs", 2, "--max-images", 2, "--preflight", 0,
                            "--cache-dir", engines), env=env)
    if fault == "wrong_shape":        # a known dim differs (the box rows lose their score column)
        assert res.returncode == 3, res.stderr
        assert "output 0 'dets' has shape [2, " in res.stderr and "the ONNX model gives [2, ?, 5]" in res.stderr
        assert "Traceback" not in res.stderr
    elif fault == "wrong_shape_labels":  # a symbolic dim: labels no longer one per detection row
        assert res.returncode == 3, res.stderr
        assert "output 1 'labels' has shape [2, " in res.stderr and "one size across all outputs" in res.stderr
        assert "Traceback" not in res.stderr
    else:
        assert res.returncode == 0, res.stderr


def test_igie_engine_runs_on_the_device_telemetry_samples(rtmdet_onnx, tmp_path, sim_sdk, monkeypatch):
    monkeypatch.setenv("SUITE_GPU_INDEX", "3")
    from common.runtime.backends import get_backend
    from common.runtime.backends.base import BuildRequest
    from common.engine_cache import EngineCache, file_sha256
    backend = get_backend("igie")
    req = BuildRequest(rtmdet_onnx, file_sha256(rtmdet_onnx), "fp32", 1, "input", (3, 320, 320),
                       EngineCache(tmp_path / "c"), {})
    runner = backend.load(backend.build(req)[0], req)
    assert runner.device.index == 3 and runner.device_index == 3


def test_int8_refuses_the_evaluation_set_for_calibration(rtmdet_onnx, shared_data, tmp_path):
    import shutil
    val = shared_data / "coco" / "val2017"
    eval_name = sorted(p.name for p in val.iterdir())[0]
    copied = _calib_images(tmp_path / "copied", n=2)
    shutil.copy(val / eval_name, copied / eval_name)
    linked = _calib_images(tmp_path / "linked", n=2)
    (linked / "renamed.jpg").symlink_to(val / eval_name)
    named = tmp_path / "elsewhere" / "val2017"
    _calib_images(named, n=2)
    cases = [(val, [], "is the evaluation images dir"),
             (copied, [], "belong to the evaluation set"),
             (linked, [], "belong to the evaluation set"),
             (None, [], "needs calibration images"),
             (tmp_path / "nope", [], "calibration images dir not found")]
    for calib, extra, words in cases:
        log = tmp_path / "calls.jsonl"
        res = _build(rtmdet_onnx, shared_data, tmp_path / "engines", calib, log, *extra)
        assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr, (calib, res.stderr)
        assert "tvm.relay.build" not in str(_calls(log))
    # without an evaluation set configured, a val2017 folder is still refused by its name
    import subprocess
    import sys
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "build_engine.py"), "--model", "rtmdet", "--onnx",
                          str(rtmdet_onnx), "--backend", "igie", "--precision", "int8", "--calib-dir", str(named),
                          "--cache-dir", str(tmp_path / "engines")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **_env(tmp_path / "l.jsonl"), "DATASETS_DIR": "", "COCO_ANNOTATION": ""})
    assert res.returncode == 2 and "val2017 folder" in res.stderr, res.stderr


def test_output_shapes_are_remembered_in_the_engine_cache(rtmdet_onnx, tmp_path):
    """The ONNX's output shapes (ONNX Runtime's symbolic inference, which imports sympy) are worked out once per
    file and input shapes; a planted entry shows that loads read it, a damaged one is worked out again."""
    from common.engine_cache import EngineCache, file_sha256
    from common.runtime.backends import igie_backend
    from common.runtime.backends.base import BuildRequest
    req = BuildRequest(rtmdet_onnx, file_sha256(rtmdet_onnx), "fp16", 2, "input", (3, 320, 320),
                       EngineCache(tmp_path / "c"), {})
    shapes = {"input": [2, 3, 320, 320]}
    first = igie_backend._outputs_remembered(req, shapes)
    assert first == igie_backend._outputs(rtmdet_onnx, shapes)
    assert [(name, shape[0], shape[-1]) for name, shape in first] == [("dets", 2, 5), ("labels", 2, first[1][1][1])]
    (memo,) = (tmp_path / "c" / "igie-outputs").glob("*.json")
    memo.write_text(json.dumps([["dets", [9, 9, 9]]]))
    assert igie_backend._outputs_remembered(req, shapes) == [("dets", [9, 9, 9])]
    memo.write_text("{damaged")
    assert igie_backend._outputs_remembered(req, shapes) == first
    igie_backend._outputs_remembered(req, {"input": [4, 3, 320, 320]})   # another batch: another entry
    assert len(list((tmp_path / "c" / "igie-outputs").glob("*.json"))) == 2


def test_output_shapes_are_worked_out_without_importing_torch(rtmdet_onnx):
    """onnxruntime/tools/__init__.py imports torch whenever it is installed (the vendor's torch on an MR-V100
    node): the symbolic inference is loaded from its own file, so working out the shapes never pays for torch,
    and the shapes are those of ONNX Runtime's module imported the usual way."""
    import subprocess
    import sys
    pytest.importorskip("torch")       # only where torch is installed is there an import to avoid
    code = ("import json, sys; from common.runtime.backends.igie_backend import _outputs; "
            f"shapes = _outputs({str(rtmdet_onnx)!r}, {{'input': [2, 3, 320, 320]}}); "
            "print(json.dumps([shapes, 'torch' in sys.modules]))")
    from common import IMPORT_PATH
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(IMPORT_PATH)})
    assert res.returncode == 0, res.stderr
    shapes, torch_imported = json.loads(res.stdout)
    assert not torch_imported
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    model = onnx.load(str(rtmdet_onnx))
    for d, v in zip(model.graph.input[0].type.tensor_type.shape.dim, [2, 3, 320, 320]):
        d.ClearField("dim_param")
        d.dim_value = v
    want = [[o.name, [d.dim_value if d.HasField("dim_value") else d.dim_param for d in o.type.tensor_type.shape.dim]]
            for o in SymbolicShapeInference.infer_shapes(model, auto_merge=True).graph.output]
    assert shapes == want
