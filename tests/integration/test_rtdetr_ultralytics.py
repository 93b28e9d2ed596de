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


def _ultralytics_predictor_on(recording, sizes, images_dir, conf):
    """Ultralytics' own RTDETRPredictor.postprocess on the suite's recorded output0, image by image."""
    from types import SimpleNamespace

    import cv2
    import numpy as np
    import torch
    from ultralytics.models.rtdetr.predict import RTDETRPredictor

    from common.config.specs import COCO80_TO_91
    predictor = RTDETRPredictor(overrides={"conf": conf, "max_det": 300, "verbose": False})
    predictor.model = SimpleNamespace(names={i: str(i) for i in range(80)})
    ref = {}
    for image_id in recording.manifest["image_ids"]:
        out = recording.batch([image_id])["output0"]
        w, h = sizes[image_id]
        img = cv2.imread(str(images_dir / f"{image_id:012d}.jpg"))
        assert img.shape[:2] == (h, w)
        predictor.batch = [[f"{image_id}.jpg"]]
        boxes = predictor.postprocess(torch.from_numpy(np.ascontiguousarray(out)), None, [img])[0].boxes
        ref[image_id] = (boxes.xyxy.numpy().astype(np.float64), boxes.conf.numpy().astype(np.float64),
                         np.asarray(COCO80_TO_91)[boxes.cls.numpy().astype(np.int64)])
    return ref


@pytest.mark.slow
def test_real_ultralytics_export_through_the_scripts(tmp_path, monkeypatch):
    """Where ultralytics is installed: its own export, through the suite, and its own predictor's post-processing
    of the suite's recorded outputs matched with the suite's detections (>= 99%)."""
    ultralytics = pytest.importorskip("ultralytics", reason="ultralytics (AGPL-3.0) is an optional extra")
    import onnx

    from common.runtime.replay import Recording
    from test_detr_reference_postprocess import _suite_detections, match_fraction
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)                             # Ultralytics writes the export beside the model
    size = 320
    model = ultralytics.RTDETR("rtdetr-l.yaml")            # architecture only: random weights, no download
    onnx_path = model.export(format="onnx", imgsz=size, dynamic=True, simplify=False)
    assert [o.name for o in onnx.load(str(onnx_path)).graph.output] == ["output0"]
    import numpy as np
    import onnxruntime as ort
    # the graph declares the last dimension symbolically (8.4.190: 'anchors'): its value is what a run gives
    (out,) = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        None, {"images": np.zeros((1, 3, size, size), np.float32)})
    assert out.shape[1:] in ((300, 6), (300, 4 + 80)), out.shape
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
                     "--cache-dir", tmp_path / "cache", "--workers", 0, "--no-progress",
                     "--record-outputs", tmp_path / "rec", "--save-detections", tmp_path / "dets.json")
    assert res.returncode == 0, res.stdout + res.stderr
    ann = json.loads((tmp_path / "coco" / "annotations" / "instances_val2017.json").read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in ann["images"]}
    ref = _ultralytics_predictor_on(Recording(tmp_path / "rec"), sizes, tmp_path / "coco" / "images" / "val2017",
                                    conf=0.01)
    fraction, n_ref = match_fraction(ref, _suite_detections(tmp_path / "dets.json"))
    print(f"\nreal ultralytics {ultralytics.__version__}: matched {fraction:.4f} of {n_ref} detections")
    assert n_ref > 0 and fraction >= 0.99, fraction
