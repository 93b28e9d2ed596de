"""FP16 fidelity: compare a candidate engine with the FP32 reference, localise FP16 overflow to its node, fix it
with a block list, and stop an accuracy run early when its engine is broken (common/compare/fidelity_judge.py, common/harness/preflight.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from common.runtime.backends.onnxruntime_backend import convert_fp16
from common.errors import ConfigError
from common.compare.fp16_range import graph_types as _types, run_exposed as _run_exposed
from common.compare.comparator import match_detections
from common.compare.fidelity_judge import compare_outputs, judge
from common.compare.fp16_localise import localise
from common.tolerances import Tolerance
from common.config.specs import load_spec
from fidelity_helpers import overflow_graph, plant_overflow
from helpers import REPO
from tiny_detr import build_tiny_detr, tiny_detr_spec

ANN = "instances_val2017_person_subset350.json"


def _run(path, x, optimise=True):
    so = ort.SessionOptions()
    if not optimise:  # the FP16 graph as written: the CPU provider may otherwise run an FP16 Mul pair in FP32
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [{"output": sess.run(["output"], {"input": x[i:i + 1]})[0]} for i in range(len(x))]


def _types_and_values(path, x, name):
    model = onnx.load(str(path))
    return _run_exposed(model, [name], _types(model), "input", x)[name][0]


def test_overflow_is_localised_to_its_node_and_fixed_by_the_block_list(tmp_path):
    model = overflow_graph(tmp_path / "overflow.onnx")
    x = np.random.default_rng(0).normal(0, 3, (2, 3, 8, 8)).astype(np.float32)
    loc = localise(model, x, "input", Tolerance(), log=lambda *_: None)
    first = loc["first_nodes"]
    assert [(f["name"], f["op_type"], f["reason"]) for f in first] == [("amplify", "Mul", "overflow")]
    assert first[0]["ref_max_abs"] > 65504
    # the overflowing value has to be read in FP32 too, so its reader joins the block list; then nothing is left
    assert loc["block_nodes"] == ["amplify", "shrink"] and loc["clean"]
    assert loc["rounds"][-1]["findings"] == []

    ref = _run(model, x)
    plain, fixed = tmp_path / "plain16.onnx", tmp_path / "fixed16.onnx"
    convert_fp16(model, plain)
    convert_fp16(model, fixed, block_nodes=loc["block_nodes"])
    # the plain FP16 graph holds 'huge' in float16: Inf (onnxruntime's CPU provider happens to compute this Mul
    # pair in FP32 and skip the float16 tensor, an FP16 device does not)
    huge = _types_and_values(plain, x, "huge")
    assert huge.dtype == np.float16 and np.isinf(huge).any()
    # fixed: 'shrink' reads the FP32 value straight from 'amplify', and the outputs are within tolerance
    converted = onnx.load(str(fixed))
    shrink = next(n for n in converted.graph.node if n.name == "shrink")
    assert np.isfinite(_types_and_values(fixed, x, shrink.input[0])).all()
    assert _types(converted)[shrink.input[0]] == onnx.TensorProto.FLOAT
    for optimise in (False, True):
        stats = compare_outputs(ref, _run(fixed, x, optimise))
        assert judge(stats, None, Tolerance()) == []
        assert stats["output"]["cosine"] > 0.9999 and stats["output"]["nan"] == stats["output"]["inf"] == 0
    # still a real FP16 graph around the blocked pair
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in converted.graph.initializer)
    kinds = {n.name: n.op_type for n in converted.graph.node}
    assert kinds["double"] == "Mul" and kinds["head"] == "Add"


def test_two_blocked_readers_of_one_tensor_convert_to_a_valid_graph(tmp_path):
    """onnxruntime's converter names the cast in front of a blocked node after the tensor: two blocked readers
    used to give two nodes with one output name."""
    model = overflow_graph(tmp_path / "overflow.onnx")
    out = tmp_path / "fp16.onnx"
    convert_fp16(model, out, block_nodes=["amplify", "shrink", "head"])
    onnx.checker.check_model(onnx.load(str(out)))
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def test_matching_pairs_detections_one_to_one():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10.5], [50, 50, 60, 60]], np.float64)
    ref = (boxes, np.array([0.9, 0.5, 0.8]), np.array([0, 0, 1]))
    # the candidate swaps the order of the two near-identical boxes and loses the third
    cand = (boxes[[1, 0]], np.array([0.5, 0.9]), np.array([0, 0]))
    pairs = match_detections(ref, cand, score_threshold=0.3)
    assert pairs == [(1.0, 0.0), (1.0, 0.0), None]


def test_fidelity_block_is_validated(tmp_path):
    onnx_path = build_tiny_detr(tmp_path / "tiny.onnx")
    spec = tiny_detr_spec(tmp_path / "model.yaml", onnx_path)
    spec.write_text(spec.read_text().replace("    build:", "    fidelity: {min_cosin: 0.99}\n    build:"))
    with pytest.raises(ConfigError, match="fidelity.min_cosin: unknown key"):   # at load, naming the file
        load_spec(spec)
    spec.write_text(spec.read_text().replace("min_cosin: 0.99", "min_cosine: 0.99, outputs: [dets]"))
    tol = load_spec(spec).variant().fidelity
    assert tol.min_cosine == 0.99 and tol.outputs == ("dets",) and tol.max_ap_diff == Tolerance().max_ap_diff
    v = load_spec(spec).variant().with_block_nodes(["a"])
    assert v.build_options == {"fp16_block_ops": ["ArgMax", "ReduceMax"], "fp16_block_nodes": ["a"]}


# ---- real images (SUITE_SHARED_DATA)

def _compare(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    clean = build_tiny_detr(d / "tiny.onnx")
    planted = plant_overflow(clean, d / "planted.onnx", "xyxy")   # box corners in pixels x 60000 > 65504
    return {"clean": tiny_detr_spec(d / "clean.yaml", clean), "planted": tiny_detr_spec(d / "planted.yaml", planted),
            "cache": d / "engines"}


def test_compare_localises_and_fixes_a_planted_overflow(tiny, coco_layout, tmp_path):
    data = ["--dataset-dir", coco_layout, "--ann", ANN, "--images", 6, "--cache-dir", tiny["cache"]]
    ok = _compare("--model", tiny["clean"], *data, "--report", tmp_path / "clean.json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads((tmp_path / "clean.json").read_text())["verdict"] == "pass"

    bad = _compare("--model", tiny["planted"], *data, "--report", tmp_path / "planted" / "report.json")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    report = json.loads((tmp_path / "planted" / "report.json").read_text())
    assert report["verdict"] == "fail" and report["reasons"]
    first = report["localisation"]["first_nodes"]
    assert [(f["name"], f["op_type"], f["reason"]) for f in first] == [("planted_amplify", "Mul", "overflow")]
    assert "planted_amplify (Mul) -> planted_huge: overflow" in bad.stdout
    assert report["fix"]["block_nodes"] == ["planted_amplify", "planted_shrink"]
    assert report["fix"]["verdict"] == "pass", report["fix"]["reasons"]
    snippet = (tmp_path / "planted" / "fp16_block_nodes.yaml").read_text()
    assert "fp16_block_nodes:\n  - planted_amplify\n  - planted_shrink" in snippet
    assert "fp16_block_ops" in snippet                    # the spec's own build options are kept

    missing = _compare("--model", tiny["clean"], "--onnx", tmp_path / "nope.onnx", *data)
    assert missing.returncode == 2 and "nope.onnx" in missing.stderr and "Traceback" not in missing.stderr


def test_rtmdet_fp16_is_within_tolerance_of_fp32(rtmdet_onnx, coco_layout, tmp_path):
    res = _compare("--model", "rtmdet", "--onnx", rtmdet_onnx, "--dataset-dir", coco_layout, "--ann", ANN,
                   "--images", 8, "--cache-dir", tmp_path / "engines", "--report", tmp_path / "r.json")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    d = report["detections"]
    assert report["verdict"] == "pass" and d["reference_detections"] > 10
    assert d["matched"] >= 0.95 and d["mean_iou"] > 0.95 and abs(d["ap_diff"]) <= 0.02
    assert set(report["outputs"]) == {"dets", "labels"} and "localisation" not in report


def _accuracy(spec, coco_layout, results, cache, *extra):
    return subprocess.run([str(REPO / "scripts" / "suite"), "accuracy", "--model", spec, "--precision", "fp16",
                           "--dataset-dir", coco_layout, "--ann", ANN, "--results-dir", results, "--cache-dir", cache,
                           "--no-progress", "--workers", "0", *map(str, extra)],
                          capture_output=True, text=True, timeout=300)


def test_preflight_stops_an_accuracy_run_on_a_broken_engine(tiny, coco_layout, tmp_path):
    bad = _accuracy(tiny["planted"], coco_layout, tmp_path / "bad", tiny["cache"], "--preflight", 4)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "preflight: onnxruntime fp16 vs FP32 reference on 4 image(s): FAIL" in bad.stdout
    # the comparison is printed; the planted shrink is a Div (x 1/60000 would be a float16 subnormal), which the
    # CPU computes in FP32 from the FP32 value, so the CPU's detections match and the range check is what stops it
    assert " detections: " in bad.stdout and "FP16 range:" in bad.stdout and "out of tolerance" in bad.stderr
    # stopped before the full pass, and exit 1 comes with its record: verdict fail, the pre-flight's reasons
    [record] = [json.loads(p.read_text()) for p in (tmp_path / "bad").glob("*.json")]
    assert record["verdict"] == "fail" and record["dataset"]["stopped_by"] == "preflight"
    assert any(r.startswith("preflight: FP16 range:") and "overflow" in r for r in record["reasons"])
    assert record["preflight"]["fp16_range"]["verdict"] == "fail" and record["metrics"] == {}
    assert "stopped by the preflight before the full pass" in bad.stdout
    # the same broken engine without the pre-flight goes through the whole pass
    full = _accuracy(tiny["planted"], coco_layout, tmp_path / "full", tiny["cache"], "--preflight", 0,
                     "--max-images", 40)
    assert "preflight:" not in full.stdout and len(list((tmp_path / "full").glob("*.json"))) == 1
    good = _accuracy(tiny["clean"], coco_layout, tmp_path / "good", tiny["cache"], "--max-images", 8)
    assert good.returncode == 0 and "preflight: onnxruntime fp16 vs FP32 reference on 4 image(s): ok" in good.stdout


def test_rtmdet_raw_head_fp16_tensors_are_within_tolerance(rtmdet_raw_onnx, coco_layout, tmp_path):
    """The raw-head variant is judged tensor by tensor too (fixed shapes): real FP16 keeps cosine > 0.999."""
    raw = rtmdet_raw_onnx
    res = _compare("--model", "rtmdet", "--variant", "nano-person-raw", "--onnx", raw, "--dataset-dir", coco_layout,
                   "--ann", ANN, "--images", 8, "--cache-dir", tmp_path / "engines", "--report", tmp_path / "r.json")
    assert res.returncode == 0, res.stdout + res.stderr
    outputs = json.loads((tmp_path / "r.json").read_text())["outputs"]
    assert set(outputs) == {"y", "y.8", "y.16", "y.4", "y.12", "y.20"}
    assert all(0.999 < s["cosine"] < 1.0 and s["nan"] == s["inf"] == 0 and s["max_abs_err"] > 0
               for s in outputs.values())
