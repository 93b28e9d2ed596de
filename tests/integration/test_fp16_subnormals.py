"""Issue 35 item 2: float16 subnormals as a declared device property of the FP16 range check.

A graph whose tensor is float16-subnormal almost everywhere (the input / 30000, read back x 30000): kept
subnormals hold it (0.2 % relative error), a device that flushes them to zero loses ~90 % of its values. The
strict default (flush) fails it as "underflow to zero" in the range check, the localisation, the pre-flight
(exit 1) and compare.py (exit 1); `fidelity: {fp16_subnormals: keep}` in the spec judges it as kept."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from common.compare.fp16_range import _ref_range
from common.compare.fp16_localise import localise
from common.compare.fp16_range import range_check
from common.tolerances import Tolerance
from common.harness.runs import RunConfig, run_accuracy
from common.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from helpers import REPO
from tiny_detector import SPEC, tiny_detector_env

SCALE = 30000.0   # normal in float16 (unlike 1/30000): the plant itself adds no subnormal constant


def subnormal_graph(path):
    """input -> Div /30000 ('lower': 'low', float16-subnormal for |x| < 1.8) -> Relu ('act') -> Mul x30000
    ('raise') -> Add bias -> output: FP32 outputs as without the plant."""
    inits = [numpy_helper.from_array(np.array([SCALE], np.float32), "scale"),
             numpy_helper.from_array(np.linspace(-1, 1, 8).astype(np.float32), "bias")]
    nodes = [helper.make_node("Div", ["input", "scale"], ["low"], name="lower"),
             helper.make_node("Relu", ["low"], ["act"], name="relu"),
             helper.make_node("Mul", ["act", "scale"], ["back"], name="raise"),
             helper.make_node("Add", ["back", "bias"], ["output"], name="head")]
    graph = helper.make_graph(nodes, "subnormal", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                 ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


X = np.random.default_rng(0).normal(0, 1, (2, 3, 8, 8)).astype(np.float32)


def test_reference_range_models_flushed_subnormals():
    v = X.ravel() / SCALE
    kept, flushed = _ref_range([v], "keep"), _ref_range([v], "flush")
    assert kept.quant_cosine > 0.9999 and kept.flush_cosine == 1.0    # subnormals hold the values
    assert flushed.quant_cosine > 0.9999 and flushed.flush_cosine < 0.7   # flushed: ~94 % of them become 0
    assert flushed.flushed > 0.9 * v.size and kept.flushed == 0
    assert _ref_range([X.ravel()], "flush").flush_cosine == 1.0   # ordinary values: nothing flushed


def test_range_check_fails_underflow_to_zero_by_default_and_passes_when_kept(tmp_path):
    model = subnormal_graph(tmp_path / "sub.onnx")
    strict = range_check(model, X, "input", Tolerance())
    assert strict["verdict"] == "fail" and strict["fp16_subnormals"] == "flush"
    found = {f["tensor"]: f["reason"] for f in strict["findings"]}
    assert found.get("low") == "underflow_to_zero" and set(found.values()) == {"underflow_to_zero"}, found
    assert any("underflow to zero" in r and "low" in r for r in strict["reasons"]), strict["reasons"]
    kept = range_check(model, X, "input", Tolerance(fp16_subnormals="keep"))
    assert kept["verdict"] == "pass" and kept["fp16_subnormals"] == "keep"


def test_localisation_names_the_origin_and_its_list_is_sound_when_flushed(tmp_path):
    model = subnormal_graph(tmp_path / "sub.onnx")
    loc = localise(model, X, "input", Tolerance(), log=lambda *_: None)
    assert [(f["name"], f["reason"]) for f in loc["first_nodes"]] == [("lower", "underflow_to_zero")]
    assert loc["clean"] and {"lower", "relu"} <= set(loc["block_nodes"]) <= {"lower", "relu", "raise"}
    assert range_check(model, X, "input", Tolerance(), block_nodes=loc["block_nodes"])["verdict"] == "pass"


def test_backends_declare_the_strict_model():
    assert OnnxRuntimeBackend.capabilities.fp16_subnormals == "flush"


# ---- the pre-flight and compare.py on a detector with the plant ------------------------------------------

def _plant_tiny(src, dst):
    """The tiny detector with its input / 30000 before its ReduceMean and its mean x 30000 after: the same
    detections in FP32; on a flushing device the mean is ~0 and every box moves."""
    model = onnx.load(str(src))
    g = model.graph
    g.initializer.append(numpy_helper.from_array(np.array(SCALE, np.float32), "planted_scale"))
    mean = next(n for n in g.node if n.op_type == "ReduceMean")
    mean.input[0] = "planted_low"
    for n in g.node:
        if "m" in n.input:
            n.input[list(n.input).index("m")] = "planted_m"
    at = list(g.node).index(mean)
    g.node.insert(at + 1, helper.make_node("Mul", ["m", "planted_scale"], ["planted_m"], name="planted_raise"))
    g.node.insert(at, helper.make_node("Div", ["input", "planted_scale"], ["planted_low"], name="planted_lower"))
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("subnormal")
    e = tiny_detector_env(d, 6)
    e["planted"] = _plant_tiny(e["onnx"], d / "planted.onnx")
    keep = d / "keep.yaml"
    keep.write_text(SPEC.format(size=64).replace("    targets:", "    fidelity: {fp16_subnormals: keep}\n    targets:"))
    e["keep_spec"] = keep
    return e


def _accuracy(env, tmp, spec):
    return run_accuracy(RunConfig(model=str(spec), onnx=str(env["planted"]), dataset_dir=str(env["coco"]),
                                  precision="fp16", preflight=2, workers=0, progress=False, threads=1,
                                  results_dir=str(tmp / "res"), cache_dir=str(tmp / "cache")))


def test_preflight_stops_the_plant_under_the_strict_model_and_says_which(env, tmp_path, capsys):
    record = _accuracy(env, tmp_path, env["spec"])
    out = capsys.readouterr().out
    assert record["verdict"] == "fail" and record["dataset"]["stopped_by"] == "preflight"
    found = record["preflight"]["fp16_range"]
    assert found["fp16_subnormals"] == "flush"
    assert any(f["reason"] == "underflow_to_zero" and f["tensor"] == "planted_low" for f in found["findings"])
    assert "float16 subnormals: flush (the backend's declared default)" in out
    # the spec declares that the device keeps them: the same graph passes, and the output says so
    record = _accuracy(env, tmp_path, env["keep_spec"])
    out = capsys.readouterr().out
    assert "stopped_by" not in record["dataset"] and record["verdict"] == "pass", record["reasons"]
    assert "float16 subnormals: keep (the spec's fidelity.fp16_subnormals)" in out


def test_compare_exits_1_on_the_plant(env, tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), "--model", str(env["spec"]),
                          "--onnx", str(env["planted"]), "--dataset-dir", str(env["coco"]), "--images", "2",
                          "--precision", "fp16", "--no-fix", "--cache-dir", str(tmp_path / "engines"),
                          "--report", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["fp16_range"]["verdict"] == "fail" and report["fp16_range"]["fp16_subnormals"] == "flush"
    assert any("underflow to zero" in r for r in report["reasons"])
    assert "float16 subnormals: flush" in res.stdout
