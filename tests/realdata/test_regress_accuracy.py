"""The CI regression runner with the real RTMDet-nano model on real COCO images: a planted accuracy regression
is caught by the relative FP16-vs-FP32 rule, and sharded runs merged equal the unsharded run (verdicts, metrics,
JUnit, the README results table)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import yaml
from onnx import helper, numpy_helper

from common.ci.reports import README_END, README_START
from regress_helpers import FAST_PERF, REPO, junit_cases, regress, verdicts
from tiny_detr import build_tiny_detr, tiny_detr_spec

ANN = "instances_val2017_person_subset350.json"


def _shifted_boxes_onnx(src, dst, shift_px: float):
    """The RTMDet graph with every output box moved by shift_px input pixels (a planted accuracy bug, as a
    miscompiled engine would produce)."""
    model = onnx.load(str(src))
    producer = next(n for n in model.graph.node if "dets" in n.output)
    producer.output[list(producer.output).index("dets")] = "dets_unshifted"
    model.graph.initializer.append(numpy_helper.from_array(
        np.array([shift_px, shift_px, shift_px, shift_px, 0], np.float32), "planted_shift"))
    model.graph.node.append(helper.make_node("Add", ["dets_unshifted", "planted_shift"], ["dets"], name="planted"))
    onnx.save(model, str(dst))
    return dst


def _rtmdet_spec(path, planted_fp16=None, perf_batch_sizes=(1,)):
    """The repo's RTMDet spec with a CI-sized matrix (and, when given, a planted ONNX for the FP16 case)."""
    raw = yaml.safe_load((REPO / "models" / "rtmdet" / "model.yaml").read_text())
    variant = raw["variants"][raw["default_variant"]]
    raw["variants"] = {raw["default_variant"]: variant}  # the shared ONNX is the end2end export of this variant
    # 1 point: 16 images are few, and real FP16 moves AP50 by about half a point on them
    variant["matrix"] = {"precisions": ["fp32", "fp16"], "batch_sizes": list(perf_batch_sizes),
                         "accuracy_batch_sizes": [1],
                         "relative": {"AP": 1.0, "AP50": 1.0}}
    if planted_fp16:
        variant["matrix"]["onnx"] = {"fp16": str(planted_fp16)}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.mark.slow
def test_planted_accuracy_regression_is_caught(tmp_path, rtmdet_onnx, coco_layout, cache):
    common = ["--kind", "accuracy", "--onnx", f"rtmdet={rtmdet_onnx}", "--dataset-dir", coco_layout, "--ann", ANN,
              "--max-images", 16, "--workers", 0, "--cache-dir", cache, "--no-plots", "--baselines", tmp_path / "b"]
    clean = tmp_path / "clean"
    assert regress("run", "--models", _rtmdet_spec(tmp_path / "clean.yaml"), *common, "--out", clean) == 0
    v = verdicts(clean)
    fp16 = v["rtmdet/nano-person/onnxruntime/fp16/bs1/accuracy"]
    assert fp16["status"] == "warn" and fp16["gaps"] == ["missing accuracy baseline"]   # only that: no baseline
    assert any(n.startswith("AP50 ") and ">= FP32" in n for n in fp16["notes"])      # the rule was applied
    ref_ap = v["rtmdet/nano-person/onnxruntime/fp32/bs1/accuracy"]["values"]["AP"]
    assert fp16["values"]["ref_AP"] == ref_ap

    planted_onnx = _shifted_boxes_onnx(rtmdet_onnx, tmp_path / "rtmdet_shifted.onnx", 2.0)
    planted = tmp_path / "planted"
    spec = _rtmdet_spec(tmp_path / "planted.yaml", planted_fp16=planted_onnx)
    assert regress("run", "--models", spec, *common, "--out", planted) == 1
    v = verdicts(planted)
    assert v["rtmdet/nano-person/onnxruntime/fp32/bs1/accuracy"]["status"] == "warn"    # no baseline, nothing else
    bad = v["rtmdet/nano-person/onnxruntime/fp16/bs1/accuracy"]
    assert bad["status"] == "fail"
    assert any(n.startswith("accuracy regression: AP ") for n in bad["notes"])
    assert bad["values"]["AP"] < ref_ap - 0.01       # the plant costs more than a point, the rule allows one
    # a 2-pixel shift still clears the absolute floors: only the comparison with FP32 catches it
    assert any(n.startswith("targets held") for n in bad["notes"])
    tag, message = junit_cases(planted)["rtmdet.nano-person.onnxruntime.fp16.bs1.accuracy"]
    assert tag == "failure" and "regression" in message


def _case_view(run_dir):
    """What must not depend on sharding: the cases, their status, and every accuracy figure."""
    return {cid: (v["status"], v["values"].get("AP"), v["values"].get("AP50"))
            for cid, v in verdicts(run_dir).items()}


@pytest.mark.slow
def test_sharded_runs_merged_equal_the_unsharded_run(tmp_path, rtmdet_onnx, coco_layout, cache):
    tiny_onnx = build_tiny_detr(tmp_path / "tiny.onnx")
    (tmp_path / "tiny").mkdir()
    tiny_spec = tiny_detr_spec(tmp_path / "tiny" / "model.yaml", tiny_onnx)
    # tiny DETR: FP16 performance at batch 1 and 2 only (two README rows and a FPS-vs-batch plot)
    tiny_spec.write_text(tiny_spec.read_text().replace("accuracy_batch_sizes: [1]", "accuracy_batch_sizes: []")
                         .replace("precisions: [fp32, fp16]", "precisions: [fp16]", 1))
    rtm_dir = tmp_path / "rtmdet"
    rtm_dir.mkdir()
    rtm_spec = _rtmdet_spec(rtm_dir / "model.yaml", perf_batch_sizes=())
    # rtmdet: FP32 + FP16 accuracy; tiny DETR: FP16 performance at batch 1 and 2
    args = ["--models", f"{rtm_spec},{tiny_spec}", "--onnx", f"rtmdet={rtmdet_onnx}", "--dataset-dir", coco_layout,
            "--ann", ANN, "--max-images", 12, "--workers", 0, "--repeats", 1, "--cache-dir", cache,
            "--baselines", tmp_path / "baselines", *FAST_PERF]
    whole = tmp_path / "whole"
    code_whole = regress("run", *args, "--out", whole, "--run-id", "whole")
    assert code_whole == 0
    assert len(verdicts(whole)) == 4
    shards = []
    for k in (1, 2, 3):
        d = tmp_path / f"shard{k}"
        assert regress("run", *args, "--shard", f"{k}/3", "--out", d, "--run-id", "sharded", "--no-plots") == 0
        shards.append(d)
    assert sorted(len(verdicts(d)) for d in shards) == [1, 1, 2]     # 4 cases in 3 deterministic slices
    merged = tmp_path / "merged"
    assert regress("merge", *shards, "--out", merged, "--baselines", tmp_path / "baselines",
                   "--update-readmes") == code_whole
    assert _case_view(merged) == _case_view(whole)
    assert {k: v[0] for k, v in junit_cases(merged).items()} == {k: v[0] for k, v in junit_cases(whole).items()}
    # a shard merged twice is refused: the shards were not slices of one matrix
    assert regress("merge", shards[0], shards[0], "--out", tmp_path / "twice") == 2

    # the results table in each model's README, from the merged records (under the run dir: no source tree)
    readme = (merged / "readmes" / "rtmdet" / "README.md").read_text()
    block = readme[readme.index(README_START):readme.index(README_END)]
    assert "| Model | Batch Size | Precision | FPS (`fps`) | AP50 | AP50:95 | images |" in block
    acc = verdicts(merged)["rtmdet/nano-person/onnxruntime/fp16/bs1/accuracy"]["values"]
    assert (f"| rtmdet-nano-person | 1 | FP16 | - | {acc['AP50'] * 100:.1f} | {acc['AP'] * 100:.1f} | 12 |" in block)
    tiny_readme = (merged / "readmes" / "tinydetr" / "README.md").read_text()
    fps = verdicts(merged)["tinydetr/tiny/onnxruntime/fp16/bs2/performance"]["values"]["fps"]
    assert f"| tinydetr-tiny | 2 | FP16 | {fps:.1f} | - | - | - |" in tiny_readme
    # regenerating replaces the block instead of appending a second one
    regress("report", merged, "--baselines", tmp_path / "baselines", "--update-readmes", "--no-plots")
    assert (merged / "readmes" / "rtmdet" / "README.md").read_text().count(README_START) == 1
    assert not (rtm_dir / "README.md").exists()
    png = merged / "plots" / "fps_vs_batch_tinydetr_tiny_onnxruntime_cpu.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


# --- accuracy baselines: planted whole-model drops on the shared RTMDet-nano ONNX -----------------------------------

PLANT_LAYER = "onnx::Conv_1641"      # the initializer the issue planted its noise into
BASE_IMAGES = 100


def _noisy_onnx(src, dst, scale: float, multiplicative: bool = False, seed: int = 0):
    """The model with seeded noise in one initializer: additive, `scale` x the weights' own std (a broken
    conversion), or multiplicative, weights x (1 + scale N(0,1)) (a benign numerical change)."""
    model = onnx.load(str(src))
    init = next(i for i in model.graph.initializer if i.name == PLANT_LAYER)
    w = numpy_helper.to_array(init).astype(np.float32)
    noise = np.random.default_rng(seed).standard_normal(w.shape).astype(np.float32)
    w = w * (1 + scale * noise) if multiplicative else w + scale * float(w.std()) * noise
    init.CopyFrom(numpy_helper.from_array(w.astype(np.float32), PLANT_LAYER))
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def acc_baseline(tmp_path_factory, rtmdet_onnx, coco_layout, cache):
    """An FP32 accuracy run of the unchanged model on 100 images, stored as the baseline by baseline-update."""
    d = tmp_path_factory.mktemp("accbase")
    spec = _rtmdet_spec(d / "model.yaml")
    args = ["--models", spec, "--kind", "accuracy", "--precision", "fp32", "--dataset-dir", coco_layout,
            "--ann", ANN, "--max-images", BASE_IMAGES, "--workers", 0, "--cache-dir", cache, "--no-plots",
            "--baselines", d / "baselines"]
    assert regress("run", *args, "--onnx", f"rtmdet={rtmdet_onnx}", "--out", d / "base") == 0   # warn: none yet
    assert regress("report", d / "base", "--strict", "--no-plots", "--baselines", d / "baselines") == 4  # none yet
    assert regress("baseline-update", d / "base", "--baselines", d / "baselines") == 0
    (path,) = (d / "baselines").rglob("*.json")
    entry = json.loads(path.read_text())["entries"]["rtmdet/nano-person/onnxruntime/fp32/bs1/accuracy"]
    assert entry["images"] == BASE_IMAGES and entry["onnx_sha256"]
    return {"args": args, "dir": d, "AP": entry["AP"]}


CASE = "rtmdet/nano-person/onnxruntime/fp32/bs1/accuracy"


def test_unchanged_model_passes_its_accuracy_baseline_repeatedly(acc_baseline, rtmdet_onnx):
    # ONNX Runtime on the CPU gives the same AP every time: a second run proves the verdict is stable, more
    # repeats would recompute the same numbers
    for i in range(2):
        out = acc_baseline["dir"] / f"again{i}"
        assert regress("run", *acc_baseline["args"], "--onnx", f"rtmdet={rtmdet_onnx}", "--out", out,
                       "--strict") == 0
        v = verdicts(out)[CASE]
        assert v["status"] == "pass" and v["values"]["baseline_AP"] == acc_baseline["AP"]


@pytest.mark.parametrize("scale, multiplicative, expected", [
    (0.1, False, "fail"),      # about -2 AP points at 100 images
    (0.3, False, "fail"),      # about -8 AP points (the 53.40 -> 45.66)
    (0.005, True, "pass"),     # weights x (1 + 0.005 noise): inside the noise
])
def test_planted_accuracy_drop_is_caught_by_the_baseline(acc_baseline, rtmdet_onnx, tmp_path, scale, multiplicative,
                                                         expected):
    planted = _noisy_onnx(rtmdet_onnx, tmp_path / "planted.onnx", scale, multiplicative)
    out = tmp_path / "run"
    code = regress("run", *acc_baseline["args"], "--onnx", f"rtmdet={planted}", "--out", out, "--strict")
    v = verdicts(out)[CASE]
    drop = (acc_baseline["AP"] - v["values"]["AP"]) * 100
    vals = v["values"]
    print(f"planted scale {scale} {'x' if multiplicative else '+'}: AP drop {drop:.2f} points, paired interval "
          f"[{vals['baseline_AP_diff_lo'] * 100:+.2f}, {vals['baseline_AP_diff_hi'] * 100:+.2f}]: {v['status']}")
    # baseline-update kept the baseline's detections: the paired interval judges (common/ci/paired.py)
    assert vals["accuracy_rule"] == "paired bootstrap interval"
    assert v["status"] == expected
    if expected == "fail":
        assert code == 1 and drop > 1.5
        assert any(n.startswith("accuracy regression: AP ") for n in v["notes"])
        # the absolute floors (AP >= 0.30) still hold: only the baseline catches it
        assert any(n.startswith("targets held") for n in v["notes"])
        tag, message = junit_cases(out)["rtmdet.nano-person.onnxruntime.fp32.bs1.accuracy"]
        assert tag == "failure" and message.startswith("accuracy regression")
    else:
        assert code == 0 and (vals["baseline_AP_diff_lo"] <= 0 <= vals["baseline_AP_diff_hi"] or abs(drop) < 0.1)
