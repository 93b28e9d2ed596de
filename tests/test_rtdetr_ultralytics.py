"""Ultralytics RT-DETR ONNX through the suite's accuracy script, in both of Ultralytics' export layouts.

CI needs no ultralytics (AGPL-3.0, never a dependency): tests/tiny_set_predictor.py builds, with the onnx helper
API, a stand-in with Ultralytics' exact output: `output0` [B, 300, 6] = (cx, cy, w, h, score, class) as
Ultralytics >= 8.4 exports it (RTDETRDecoder.postprocess: top 300 (query, class) pairs), and the older
[B, 300, 4 + 80]. Garbage in the score slots (raw logits, or the 6-column layout read as per-class scores) fails
the run with exit 1 and the reason in the record, never a quiet low AP. Where ultralytics is installed, a random
rtdetr-l from its own yaml is exported too. Every file goes under tmp_path, nothing into the repo.
"""
from __future__ import annotations

import json

import pytest

from common.cli import main
from helpers import REPO, run_script
from synthetic_coco import make_synthetic_coco
from tiny_set_predictor import build_set_predictor, set_predictor_spec


def _accuracy(tmp_path, spec, variant, *extra):
    results = tmp_path / f"res_{variant}_{len(list(tmp_path.glob('res_*')))}"      # one record per directory
    code = main(["accuracy", "--model", str(spec), "--variant", variant, "--dataset-dir", str(tmp_path / "coco"),
                 "--results-dir", str(results), "--cache-dir", str(tmp_path / "cache"), "--workers", "0",
                 "--no-progress", "--preflight", "0", "--no-resume", *extra])
    records = sorted(results.glob("*.json"))
    return code, (json.loads(records[-1].read_text()) if records else None)


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("ultra")
    make_synthetic_coco(root / "coco", n_images=4, seed=2)
    onnx = {layout: build_set_predictor(root / f"{layout}.onnx", layout)
            for layout in ("ultra6", "ultra84", "ultra6_logits", "ultra84_logits")}
    return root, set_predictor_spec(root / "model.yaml", onnx)


@pytest.mark.parametrize("variant", ["ultra6", "ultra84"])
def test_both_export_layouts_run_through_the_accuracy_command(standins, variant):
    root, spec = standins
    before = set(REPO.iterdir())
    code, record = _accuracy(root, spec, variant, "--save-detections", str(root / f"{variant}.json"))
    assert code == 0 and record["reasons"] == []
    dets = json.loads((root / f"{variant}.json").read_text())
    assert len(dets) > 100 and all(0 <= d["score"] <= 1 for d in dets)
    # classes, not one category from a misread column (per query, a random network's best class repeats more)
    assert len({d["category_id"] for d in dets}) > (5 if variant == "ultra6" else 1)
    assert set(REPO.iterdir()) == before                    # nothing written into the repo


@pytest.mark.parametrize("variant", ["ultra6-logits", "ultra84-logits"])
def test_scores_outside_0_1_fail_the_run_with_the_reason(standins, variant):
    root, spec = standins
    code, record = _accuracy(root, spec, variant)
    assert code == 1 and record["verdict"] == "fail"
    assert any("scores outside [0, 1]" in r and "output0" in r for r in record["reasons"]), record["reasons"]


def test_the_6_column_layout_read_as_per_class_scores_is_refused(standins, tmp_path):
    """What the old decoder did to an 8.4 export (category 2, "scores" 1..78): now a failed run with a reason."""
    root, spec = standins
    text = spec.read_text().replace("convention: ultralytics,", "convention: ultralytics, layout: per_class,")
    forced = tmp_path / "model.yaml"
    forced.write_text(text)
    code, record = _accuracy(root, forced, "ultra6")
    assert code == 1
    assert any("scores outside [0, 1]" in r for r in record["reasons"]), record["reasons"]


@pytest.mark.slow
def test_real_ultralytics_export_through_the_scripts(tmp_path, monkeypatch):
    ultralytics = pytest.importorskip("ultralytics", reason="ultralytics (AGPL-3.0) is an optional extra")
    import onnx
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)                             # Ultralytics writes the export beside the model
    size = 320
    model = ultralytics.RTDETR("rtdetr-l.yaml")            # architecture only: random weights, no download
    onnx_path = model.export(format="onnx", imgsz=size, dynamic=True, simplify=False)
    out = onnx.load(str(onnx_path)).graph.output
    assert [o.name for o in out] == ["output0"]
    assert out[0].type.tensor_type.shape.dim[2].dim_value in (6, 4 + 80)
    make_synthetic_coco(tmp_path / "coco", n_images=3, seed=2)
    spec = tmp_path / "model.yaml"
    spec.write_text(f"""schema: 1
name: rtdetr
variants:
  ultralytics-tiny:
    onnx: {onnx_path}
    input: {{name: images, height: {size}, width: {size}}}
    preprocess: {{resize: stretch, color: rgb, mean: [0, 0, 0], std: [255, 255, 255]}}
    output: {{convention: ultralytics, output: output0, max_per_img: 300, score_threshold: 0.01}}
    labels: coco80
    evaluation: {{annotation: instances_val2017.json}}
""")
    res = run_script("models/rtdetr/scripts/infer_rtdetr_fp32_accuracy.sh", "--model", spec, "--dataset-dir",
                     tmp_path / "coco", "--ann", "instances_val2017.json", "--results-dir", tmp_path / "res",
                     "--cache-dir", tmp_path / "cache", "--workers", 0, "--no-progress")
    assert res.returncode == 0, res.stdout + res.stderr
