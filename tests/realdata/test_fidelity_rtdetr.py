"""A random-initialised RT-DETR (transformers' architecture at toy sizes): the FP16 check reports the nodes FP16
cannot hold and gives the same report twice."""
from __future__ import annotations

import shutil

import onnx
import pytest

from common.compare.fp16_localise import find_fp16_culprits
from common.compare.fp16_range import FP16_MAX
from common.data.coco import DatasetRequest
from common.harness.compare_command import run_compare
from common.harness.reference_compare import load_images
from common.harness.runs import RunConfig
from common.config.specs import load_spec
from tiny_rtdetr import TOKENS, build_tiny_rtdetr_end2end, tiny_end2end_spec

ANN = "instances_val2017_person_subset350.json"


@pytest.fixture(scope="module")
def rtdetr(tmp_path_factory):
    pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("rtdetr")
    onnx_path = build_tiny_rtdetr_end2end(d / "rtdetr.onnx")
    return tiny_end2end_spec(d / "model.yaml", onnx_path), onnx_path, d / "engines"


def _strip(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("candidate",)}


@pytest.mark.slow
def test_rtdetr_fp16_sensitive_nodes_are_reported_deterministically(rtdetr, coco_layout, capsys):
    spec, onnx_path, cache = rtdetr
    variant = load_spec(spec).variant()
    cfg = RunConfig(model=str(spec), precision="fp16", dataset_dir=str(coco_layout), annotation=ANN,
                    cache_dir=str(cache))
    first = run_compare(cfg, 2, fix=False, log=lambda *_: None)
    shutil.rmtree(cache / "fp16-range")       # judged again, not remembered: the determinism is what is tested
    again = run_compare(cfg, 2, fix=False, log=lambda *_: None)
    assert not first["fp16_range"]["remembered"] and not again["fp16_range"]["remembered"]
    assert _strip(first) == _strip(again)
    assert first["outputs"]["dets"]["size"] == 2 * TOKENS * 5

    x = load_images(variant, DatasetRequest(str(coco_layout), ANN), 1).inputs
    runs = [find_fp16_culprits(onnx_path, x, "images", variant.fidelity) for _ in range(2)]
    assert runs[0]["findings"] == runs[1]["findings"]
    assert runs[0]["scanned"] == runs[0]["watched"] > 1000          # every tensor of the graph was judged
    nodes = {n.name: n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    with capsys.disabled():
        print(f"\nrandom-init RT-DETR: {len(runs[0]['findings'])} FP16-sensitive node(s)")
        for f in runs[0]["findings"]:
            print("  " + f.line())
    for f in runs[0]["findings"]:
        assert nodes[f.name] == f.op_type
    # transformers' RT-DETR masks invalid anchors with float32's max: a value no float16 can hold
    overflow = [f for f in runs[0]["findings"] if f.reason == "overflow"]
    assert overflow and all(f.ref_max_abs > FP16_MAX for f in overflow)
