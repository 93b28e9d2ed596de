"""The FP16 range check and the origin-only localisation (common/compare/fp16_range.py, common/compare/fp16_localise.py).

Four planted problems in the raw-head cut of the shared RTMDet-nano graph (FP32 outputs unchanged by each):
a direct overflow (x1e4 around the SiLU Mul of Conv_91), an overflow through the SPP's three MaxPools and its
Concat, an overflow through a Conv whose weights and bias are x5000 (then /5000), and an underflow (x1e-7 around
the same Mul). Each must be stopped by the pre-flight and by compare.py, and localised to a block list that names
the planted origin, is at most 2 nodes longer than the minimal list, and gives an FP16 graph whose every float16
tensor is finite and at cosine >= 0.999 (checked here independently of the scan, in float64).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from common.runtime.backends.onnxruntime_backend import convert_fp16
from common.compare.fidelity_judge import tensor_stats
from common.compare.fp16_localise import localise
from common.compare.fp16_range import range_check
from common.data.coco import DatasetRequest
from common.harness.reference_compare import load_images
from common.tolerances import Tolerance
from common.compare.fp16_range import _pair_stats, _ref_range, graph_types, run_exposed
from common.harness.runs import RunConfig, run_accuracy
from common.config.specs import load_model
from fidelity_helpers import overflow_graph, plant_around
from helpers import REPO

ANN = "instances_val2017_person_subset350.json"


# ---- no data needed

def test_the_float16_copy_an_unblocked_reader_reads_is_judged(tmp_path):
    """The defect: a blocked node judged by its FP32 value while the float16 copy handed to an unblocked reader
    overflows. Blocking only 'amplify' leaves that copy (tensor 'huge', read by 'shrink') beyond 65504."""
    model = overflow_graph(tmp_path / "overflow.onnx")
    x = np.random.default_rng(0).normal(0, 3, (2, 3, 8, 8)).astype(np.float32)
    half = range_check(model, x, "input", Tolerance(), block_nodes=["amplify"])
    assert half["verdict"] == "fail"
    assert [(f["tensor"], f["source"], f["reason"]) for f in half["findings"]] == [("huge", "huge", "overflow")]
    loc = localise(model, x, "input", Tolerance(), block_nodes=["amplify"], log=lambda *_: None)
    assert loc["added"] == ["shrink"] and loc["clean"]
    assert range_check(model, x, "input", Tolerance(), block_nodes=["amplify", "shrink"])["verdict"] == "pass"
    assert range_check(model, x, "input", Tolerance())["verdict"] == "fail"


def test_cosine_of_a_tensor_holding_inf_is_not_taken_on_its_finite_values():
    rng = np.random.default_rng(1)
    r = rng.normal(0, 1, 1000).astype(np.float32)
    c = (r + rng.normal(0, 1e-3, 1000)).astype(np.float16)
    s = _pair_stats([r], [c])
    r64, c64 = r.astype(np.float64), c.astype(np.float64)
    assert s.nonfinite == 0 and abs(s.cosine - r64 @ c64 / np.linalg.norm(r64) / np.linalg.norm(c64)) < 1e-6
    c[7] = np.inf
    s = _pair_stats([r], [c])
    assert s.nonfinite == 1 and s.cosine == 0.0
    assert tensor_stats(r, c)["cosine"] == 0.0 and tensor_stats(r, c)["inf"] == 1


def test_reference_range_sees_overflow_and_underflow():
    rng = np.random.default_rng(2)
    normal = rng.normal(0, 1, 5000).astype(np.float32)
    assert _ref_range([normal]).overflow == 0 and _ref_range([normal]).quant_cosine == 1.0
    big = normal.copy()
    big[:3] = [7e4, -1e5, 3e38]
    assert _ref_range([big]).overflow == 3 and _ref_range([big]).max_abs == pytest.approx(3e38)
    tiny = _ref_range([normal * 1e-7])
    assert tiny.overflow == 0 and tiny.quant_cosine < 0.99 and tiny.flushed > 0
    assert _ref_range([normal * 1e-3]).quant_cosine > 0.9999   # small but normal float16: no loss


# ---- the four plants in the shared RTMDet-nano raw head (SUITE_SHARED_DATA)

def _plant_args(graph) -> dict:
    """The planted sites, by node name in the shared graph."""
    nodes = {n.name: n for n in graph.node}
    conv, silu, spp, concat = nodes["Conv_91"], nodes["Mul_93"], nodes["MaxPool_143"], nodes["Concat_146"]
    assert conv.output[0] in silu.input and spp.input[0] in concat.input
    pools = sorted(n.name for n in graph.node if n.op_type == "MaxPool" and n.input[0] == spp.input[0])
    return {
        # (plant_around arguments, the planted origin, the minimal block list)
        "direct": (dict(tensor=conv.output[0], after=silu.output[0], factor=1e4, readers=["Mul_93"]),
                   "planted_amplify", ["planted_amplify", "Mul_93"]),
        "pool_concat": (dict(tensor=spp.input[0], after=concat.output[0], factor=1e4),
                        "planted_amplify", ["planted_amplify", *pools, "Concat_146", "planted_shrink"]),
        "scaled_conv": (dict(tensor=None, after=conv.output[0], factor=5000.0, scale_initializers=conv.input[1:]),
                        "Conv_91", ["Conv_91", "planted_shrink"]),
        "underflow": (dict(tensor=conv.output[0], after=silu.output[0], factor=1e-7, readers=["Mul_93"]),
                      "planted_amplify", ["planted_amplify", "Mul_93", "planted_shrink"]),
    }


@pytest.fixture(scope="module")
def plants(rtmdet_raw_onnx, coco_layout, tmp_path_factory):
    d = tmp_path_factory.mktemp("plants")
    variant = load_model("rtmdet").variant("nano-person-raw")
    x = load_images(variant, DatasetRequest(str(coco_layout), ANN), 2).inputs   # the plants overflow on any image
    made = {}
    for name, (args, origin, minimal) in _plant_args(onnx.load(str(rtmdet_raw_onnx)).graph).items():
        made[name] = (plant_around(rtmdet_raw_onnx, d / f"{name}.onnx", **args), origin, minimal)
    return {"raw": rtmdet_raw_onnx, "x": x, "plants": made, "dir": d, "raw_outputs": _outputs(rtmdet_raw_onnx, x)}


def _outputs(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})


def _float16_tensors_sound(fp32_path, block_nodes, x, tmp):
    """Independently of the scan: every float16 tensor of the FP16 graph built with `block_nodes` that holds an
    FP32 tensor of the same name is finite and at cosine >= 0.999 (float64). Returns how many were checked."""
    fp16 = tmp / "fixed16.onnx"
    convert_fp16(fp32_path, fp16, block_nodes=block_nodes)
    m32, m16 = onnx.load(str(fp32_path)), onnx.load(str(fp16))
    t32, t16 = graph_types(m32), graph_types(m16)
    produced32 = {o for n in m32.graph.node for o in n.output}
    names = [o for n in m16.graph.node for o in n.output
             if t16.get(o) == onnx.TensorProto.FLOAT16 and o in produced32]
    ref = run_exposed(m32, names, t32, "input", x, step=len(x))
    got = run_exposed(m16, names, t16, "input", x, step=len(x))
    for name in names:
        r, c = ref[name][0].astype(np.float64).ravel(), got[name][0].astype(np.float64).ravel()
        assert np.isfinite(c).all(), f"{name}: {int((~np.isfinite(c)).sum())} NaN/Inf with {block_nodes}"
        nr, nc = np.linalg.norm(r), np.linalg.norm(c)
        cos = 1.0 if nr == nc == 0 else r @ c / max(nr * nc, 1e-300)
        assert cos >= 0.999, f"{name}: cosine {cos:.6f} with {block_nodes}"
    return len(names)


@pytest.mark.parametrize("plant", ["direct", "pool_concat", "scaled_conv", "underflow"])
def test_planted_fp16_problem_is_localised_to_a_sound_block_list(plants, plant, tmp_path):
    path, origin, minimal = plants["plants"][plant]
    x = plants["x"]
    # the plant leaves the FP32 model as it was
    for a, b in zip(plants["raw_outputs"], _outputs(path, x)):
        assert np.abs(a - b).max() / np.abs(a).max() < 1e-4

    loc = localise(path, x, "input", Tolerance(), log=lambda *_: None)
    first = loc["first_nodes"]
    assert origin in [f["name"] for f in first] and origin in loc["block_nodes"]
    # only origins are reported, and no node outside the minimal list is blamed
    assert {f["name"] for f in first} <= set(minimal), first
    assert loc["clean"] and len(loc["block_nodes"]) <= len(minimal) + 2, loc["block_nodes"]
    assert loc["range"]["verdict"] == "pass"
    assert _float16_tensors_sound(path, loc["block_nodes"], x, tmp_path) > 300
    # the minimal list is sound too, so it is a fair yardstick (checked above when the two lists agree)
    if sorted(loc["block_nodes"]) != sorted(minimal):
        _float16_tensors_sound(path, minimal, x, tmp_path)


def test_real_model_fp16_has_no_finding(plants):
    x = plants["x"]
    assert range_check(plants["raw"], x, "input", Tolerance())["verdict"] == "pass"
    loc = localise(plants["raw"], x, "input", Tolerance(), log=lambda *_: None)
    assert loc["clean"] and loc["block_nodes"] == [] and loc["first_nodes"] == []


def _accuracy(onnx_path, coco_layout, tmp, **kw):
    cfg = RunConfig(model="rtmdet", variant="nano-person-raw", precision="fp16", onnx=str(onnx_path),
                    dataset_dir=str(coco_layout), annotation=ANN, cache_dir=str(tmp / "engines"), workers=0,
                    progress=False, preflight=2, results_dir=str(tmp / "results"), resume=False, **kw)
    return run_accuracy(cfg)


@pytest.mark.slow
def test_preflight_stops_every_unfixed_plant_and_passes_the_real_model(plants, coco_layout, tmp_path, capsys):
    # the real model first: its remembered PASS (one engine cache for all runs) must not answer for any plant
    assert "stopped_by" not in _accuracy(plants["raw"], coco_layout, tmp_path, max_images=4)["dataset"]
    memo = tmp_path / "engines" / "fp16-range"
    assert len(list(memo.glob("*.json"))) == 1
    for plant, (path, _, _) in plants["plants"].items():
        record = _accuracy(path, coco_layout, tmp_path, max_images=4)
        assert record["verdict"] == "fail" and record["dataset"]["stopped_by"] == "preflight", plant
        assert any(r.startswith("preflight: FP16 range:") for r in record["reasons"]), record["reasons"]
        found = record["preflight"]["fp16_range"]
        assert record["metrics"] == {} and found["verdict"] == "fail"
        kind = "underflow" if plant == "underflow" else "overflow"      # the planted kind of problem
        assert any(f["reason"] == kind for f in found["findings"]), found["findings"]
    assert len(list(memo.glob("*.json"))) == 1 + len(plants["plants"])   # one answer per FP16 graph
    capsys.readouterr()
    record = _accuracy(plants["raw"], coco_layout, tmp_path, max_images=4)
    assert "stopped_by" not in record["dataset"] and record["metrics"]["AP"] > 0
    assert len(list(memo.glob("*.json"))) == 1 + len(plants["plants"])   # the real model's answer, remembered
    out = capsys.readouterr().out
    assert "preflight: onnxruntime fp16 vs FP32 reference on 2 image(s): ok" in out
    assert "FP16 range check:" in out and "float16 storage" in out


def test_compare_fails_the_pool_concat_plant_the_cpu_runs_cleanly(plants, coco_layout, tmp_path):
    """The issue's P2: the CPU's FP16 outputs match FP32, the graph overflows in 5 float16 tensors: exit 1."""
    path = plants["plants"]["pool_concat"][0]
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), "--model", "rtmdet", "--variant",
                          "nano-person-raw", "--onnx", str(path), "--dataset-dir", str(coco_layout), "--ann", ANN,
                          "--images", "4", "--no-fix", "--cache-dir", str(tmp_path / "engines"),
                          "--report", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verdict"] == "fail" and report["fp16_range"]["verdict"] == "fail"
    assert all(s["nan"] == 0 and s["inf"] == 0 for s in report["outputs"].values())   # the CPU hides it
    assert any("overflow float16" in r for r in report["reasons"])
    assert "float16 storage" in res.stdout


def test_regression_counts_a_preflight_stopped_record_as_failed():
    """A record the pre-flight stopped has no metrics: the regression verdict fails it with the reason."""
    from common.ci.verdicts import FAILED, judge
    case = {"id": "m/v/onnxruntime/fp16/bs1/accuracy", "spec": "m", "variant": "v", "precision": "fp16",
            "kind": "accuracy"}
    outcome = {"case": case, "status": "ok", "records": [
        {"dataset": {"stopped_by": "preflight", "num_images": 0}, "metrics": {}, "device": "cpu",
         "engine": {"runtime": "onnxruntime-1"}, "verdict": "fail", "checks": [],
         "reasons": ["preflight: FP16 range: 1 tensor(s) overflow float16"]}]}
    (v,) = judge([outcome], {("m", "v"): {"AP": 1.0}})
    assert v["status"] == FAILED and any("FP16 range" in n for n in v["notes"])
