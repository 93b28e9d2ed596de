"""The accuracy verdict by the paired bootstrap interval on the 350 shared images (common/ci/paired.py), through
the regression runner's judge(): a planted 1-point AP drop fails (its interval excludes 0), a benign re-export
(every weight x (1 + 1e-4 N(0,1))) and the real FP16 engine pass (their intervals include 0 or the shift is
below the rule's margin); without the reference's detections the fixed rule is used and the verdict says so."""
from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from common.ci.verdicts import FAILED, WARN, judge
from common.evaluate.metrics import coco_metrics
from common.harness.runs import RunConfig, run_accuracy

RULES = {("rtmdet", "nano-person"): {"relative": {"AP": 0.2, "AP50": 0.2}, "accuracy_noise": 2.5,
                                     "reference": {}, "reference_fraction": 0.99, "evaluation_annotation": None}}


def _case(precision):
    return {"id": f"rtmdet/nano-person/onnxruntime/{precision}/bs1/accuracy", "kind": "accuracy",
            "precision": precision, "model": "rtmdet", "variant": "nano-person", "backend": "onnxruntime",
            "batch_size": 1, "spec": "rtmdet"}


def _outcome(precision, record, dets):
    return {"case": _case(precision), "status": "ok", "records": [record], "duration_s": 1.0,
            "detections_path": str(dets) if dets else None}


def _judge(fp32, candidate_record, candidate_dets, tmp_path, reference_dets="from fixture"):
    ref_dets = fp32.detections if reference_dets == "from fixture" else reference_dets
    outcomes = [_outcome("fp32", fp32.record, ref_dets), _outcome("fp16", candidate_record, candidate_dets)]
    return judge(outcomes, RULES, tmp_path / "no-baselines")[1]


def _passed_the_relative_rule(v):
    """Nothing but the missing accuracy baseline (no baselines dir here) keeps the verdict from a plain pass."""
    assert v["status"] == WARN and v["gaps"] == ["missing accuracy baseline"], v["notes"]
    assert not any(n.startswith("accuracy regression") for n in v["notes"])
    assert sum("paired interval" in n for n in v["notes"]) == 2          # AP and AP50 judged by it


def _record_of(fp32, dets_path):
    """The FP32 record with the metrics of other detections on the same images (what that run would record)."""
    ann = json.loads(open(fp32.record["dataset"]["annotation"]).read())
    dets = json.loads(dets_path.read_text())
    rows = np.array([[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in dets])
    ids = sorted(im["id"] for im in ann["images"])
    record = copy.deepcopy(fp32.record)
    record["metrics"] = coco_metrics(ann, rows, ids, record["dataset"]["categories"])
    record["precision"] = "fp16"
    return record


def _widened(src, dst, share: float, scale: float, seed: int = 0):
    """A planted accuracy bug: a share of the boxes (as a miscompiled kernel would leave them) made wider."""
    dets = json.loads(src.read_text())
    rng = np.random.default_rng(seed)
    for d in dets:
        if rng.random() < share:
            x, y, w, h = d["bbox"]
            d["bbox"] = [x, y, w * scale, h]
    dst.write_text(json.dumps(dets))
    return dst


@pytest.mark.slow
def test_one_point_drop_fails_and_the_interval_excludes_zero(rtmdet_fp32_pass, tmp_path):
    planted = _widened(rtmdet_fp32_pass.detections, tmp_path / "planted.json", 0.2, 1.08)
    record = _record_of(rtmdet_fp32_pass, planted)
    drop = (rtmdet_fp32_pass.record["metrics"]["AP"] - record["metrics"]["AP"]) * 100
    assert 0.7 < drop < 1.5, drop                    # the plant is the 1-point drop the rule must catch
    v = _judge(rtmdet_fp32_pass, record, planted, tmp_path)
    assert v["status"] == FAILED
    assert v["values"]["accuracy_rule"] == "paired bootstrap interval"
    assert v["values"]["ref_AP_diff_hi"] < 0         # excludes 0
    assert any(n.startswith("accuracy regression: AP ") and "excludes 0" in n for n in v["notes"])
    # the same drop without the reference's detections: the fixed rule, and the notes say so
    fixed = _judge(rtmdet_fp32_pass, record, planted, tmp_path, reference_dets=None)
    assert fixed["values"]["accuracy_rule"] == "fixed" and fixed["status"] == FAILED
    assert any("by the fixed rule" in n for n in fixed["notes"])


def _perturbed_onnx(src, dst, rel: float, seed: int = 0):
    """Every Conv weight and bias x (1 + rel N(0,1)): a re-export that changes the last bits of the weights."""
    model = onnx.load(str(src))
    rng = np.random.default_rng(seed)
    weights = {name for n in model.graph.node if n.op_type == "Conv" for name in n.input[1:]}
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if init.name in weights and w.dtype == np.float32:
            init.CopyFrom(numpy_helper.from_array((w * (1 + rel * rng.standard_normal(w.shape))).astype(np.float32),
                                                  init.name))
    onnx.save(model, str(dst))
    return dst


def _run(fp32, tmp_path, **kw):
    dets = tmp_path / "dets.json"
    cfg = RunConfig(**{**fp32.cfg.__dict__, "record_outputs": None, "input_cache": str(fp32.input_cache),
                       "results_dir": str(tmp_path / "results"), "detections_out": str(dets), "bootstrap": 0,
                       **kw})
    return run_accuracy(cfg), dets


@pytest.mark.slow
def test_benign_reexport_passes_with_an_interval_that_includes_zero(rtmdet_fp32_pass, rtmdet_onnx, tmp_path):
    onnx_path = _perturbed_onnx(rtmdet_onnx, tmp_path / "reexport.onnx", 1e-4)
    record, dets = _run(rtmdet_fp32_pass, tmp_path, onnx=str(onnx_path))
    v = _judge(rtmdet_fp32_pass, {**record, "precision": "fp16"}, dets, tmp_path)
    assert v["values"]["accuracy_rule"] == "paired bootstrap interval"
    assert v["values"]["ref_AP_diff_lo"] <= 0 <= v["values"]["ref_AP_diff_hi"]
    _passed_the_relative_rule(v)


@pytest.mark.slow
def test_fp16_of_the_real_model_passes(rtmdet_fp32_pass, tmp_path):
    record, dets = _run(rtmdet_fp32_pass, tmp_path, precision="fp16")
    v = _judge(rtmdet_fp32_pass, record, dets, tmp_path)
    assert v["values"]["accuracy_rule"] == "paired bootstrap interval"
    _passed_the_relative_rule(v)
