"""Ultralytics RT-DETR (optional extra, AGPL-3.0: never a dependency of the suite). When ultralytics is installed,
a randomly initialised rtdetr-l from its own model yaml is exported with Ultralytics' exporter and the ONNX
(output0 [B, 300, 4 + 80]) is run through the suite's accuracy script. Skipped without ultralytics; the
"ultralytics" decoding itself is covered without it in tests/test_detr_decode.py."""
from __future__ import annotations

import pytest

ultralytics = pytest.importorskip("ultralytics", reason="ultralytics (AGPL-3.0) is an optional extra, not installed")

from helpers import run_script  # noqa: E402
from synthetic_coco import make_synthetic_coco  # noqa: E402

SIZE = 320


@pytest.mark.slow
def test_ultralytics_rtdetr_onnx_through_the_scripts(tmp_path):
    import onnx
    model = ultralytics.RTDETR("rtdetr-l.yaml")                  # architecture only: random weights, no download
    onnx_path = model.export(format="onnx", imgsz=SIZE, dynamic=True, simplify=False)
    out = onnx.load(str(onnx_path)).graph.output
    assert [o.name for o in out] == ["output0"]
    assert out[0].type.tensor_type.shape.dim[2].dim_value == 4 + 80
    make_synthetic_coco(tmp_path / "coco", n_images=3, seed=2)
    spec = tmp_path / "model.yaml"
    spec.write_text(f"""schema: 1
name: rtdetr
variants:
  ultralytics-tiny:
    onnx: {onnx_path}
    input: {{name: images, height: {SIZE}, width: {SIZE}}}
    preprocess: {{resize: stretch, color: rgb, mean: [0, 0, 0], std: [255, 255, 255]}}
    output: {{convention: ultralytics, output: output0, max_per_img: 300, score_threshold: 0.01}}
    labels: coco80
    evaluation: {{annotation: instances_val2017.json}}
""")
    res = run_script("models/rtdetr/scripts/infer_rtdetr_fp32_accuracy.sh", "--model", spec, "--dataset-dir",
                     tmp_path / "coco", "--ann", "instances_val2017.json", "--results-dir", tmp_path / "res",
                     "--cache-dir", tmp_path / "cache", "--workers", 0, "--no-progress")
    assert res.returncode == 0, res.stdout + res.stderr
