"""Paddle-layout RT-DETR ONNX (RT-DETRv3 as the IGIE recipe runs it): extra graph inputs im_shape / scale_factor
declared in the spec and fed by the runner, rows (class, score, x1, y1, x2, y2) + bbox_num decoded, through the
accuracy and performance scripts, with known answers from a hand-built graph."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from common.data.preprocess import Preprocessor
from common.config.specs import Preprocess
from helpers import run_script
from synthetic_coco import make_synthetic_coco
from tiny_paddle_rtdetr import BOXES_NORM, C, N, SIZE, build_paddle_rtdetr, expected_scores, paddle_spec

CATS = [1, 3, 18]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("paddle")
    images_dir, ann = make_synthetic_coco(root / "coco", n_images=5, seed=4)
    onnx_path = build_paddle_rtdetr(root / "v3.onnx")
    return {"root": root, "onnx": onnx_path, "spec": paddle_spec(root / "model.yaml", onnx_path),
            "images": json.loads(ann.read_text())["images"], "images_dir": images_dir}


def _run(script, work, *extra, spec=None):
    return run_script(f"models/rtdetr/scripts/{script}", "--model", spec or work["spec"], "--dataset-dir",
                      work["root"] / "coco", "--ann", "instances_val2017.json", "--results-dir", work["root"] / "res",
                      "--cache-dir", work["root"] / "cache", *extra)


def _expected(work):
    pre = Preprocessor(Preprocess(resize="stretch", color="rgb", mean=(0, 0, 0), std=(255, 255, 255)), SIZE, SIZE)
    out = {}
    for im in work["images"]:
        x = pre(cv2.imread(str(work["images_dir"] / im["file_name"])))[0]
        scores = expected_scores(x[None], work["onnx"])[0]
        boxes = BOXES_NORM * np.array([im["width"], im["height"]] * 2)
        out[im["id"]] = sorted(zip(scores, [CATS[q % C] for q in range(N)], boxes.tolist()), key=lambda t: -t[0])
    return out


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("fp16", 2e-3)])
def test_accuracy_run_gives_the_known_detections(work, precision, tol):
    dets = work["root"] / f"dets_{precision}.json"
    res = _run(f"infer_rtdetr_{precision}_accuracy.sh", work, "--bs", 2, "--workers", 0, "--no-progress",
               "--save-detections", dets)
    assert res.returncode == 0, res.stdout + res.stderr
    got = json.loads(dets.read_text())
    want = _expected(work)
    assert len(got) == N * len(work["images"])
    for image_id, rows in want.items():
        mine = sorted((d for d in got if d["image_id"] == image_id), key=lambda d: -d["score"])
        assert [d["category_id"] for d in mine] == [r[1] for r in rows]
        np.testing.assert_allclose([d["score"] for d in mine], [r[0] for r in rows], atol=tol)
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in mine)]
        np.testing.assert_allclose(xyxy, [r[2] for r in rows], atol=0.05 if precision == "fp32" else 0.5)


def test_performance_run_feeds_the_extra_inputs(work):
    res = _run("infer_rtdetr_fp32_performance.sh", work, "--bs", 2, "--warmup", 0.05, "--min-duration", 0.2,
               "--min-iters", 3)
    assert res.returncode == 0, res.stdout + res.stderr


def test_nan_outputs_fail_the_accuracy_run(work, tmp_path):
    poisoned = build_paddle_rtdetr(tmp_path / "nan.onnx", poison=True)
    spec = paddle_spec(tmp_path / "model.yaml", poisoned)
    res = _run("infer_rtdetr_fp32_accuracy.sh", work, "--workers", 0, "--no-progress", spec=spec)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "NaN/Inf" in res.stdout + res.stderr


def test_undeclared_or_absent_extra_inputs_are_config_errors(work, tmp_path):
    spec = paddle_spec(tmp_path / "a.yaml", work["onnx"], extra="{}")
    res = _run("infer_rtdetr_fp32_accuracy.sh", work, "--workers", 0, spec=spec)
    assert res.returncode == 2 and "declare them under input.extra" in res.stderr, res.stdout + res.stderr
    plain = build_paddle_rtdetr(tmp_path / "plain.onnx", with_extra_inputs=False)
    spec = paddle_spec(tmp_path / "b.yaml", plain)
    res = _run("infer_rtdetr_fp32_accuracy.sh", work, "--workers", 0, spec=spec)
    assert res.returncode == 2 and "the graph does not have" in res.stderr, res.stdout + res.stderr
    spec = paddle_spec(tmp_path / "c.yaml", plain, extra="{}")          # a graph with the image input only
    res = _run("infer_rtdetr_fp32_accuracy.sh", work, "--workers", 0, "--no-progress", spec=spec)
    assert res.returncode == 0, res.stdout + res.stderr


def test_igie_backend_feeds_the_extra_inputs(work, tmp_path):
    """On the simulated IGIE SDK (tests/sim_igie, test-only): the extra inputs are part of the compiled shapes and
    are set before every run, and the detections are the known ones."""
    import os

    from helpers import REPO
    log = tmp_path / "calls.jsonl"
    env = {"PYTHONPATH": f"{REPO / 'tests' / 'sim_igie'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "SIM_IGIE_LOG": str(log)}
    dets = tmp_path / "dets.json"
    res = run_script("models/rtdetr/scripts/infer_rtdetr_fp16_accuracy.sh", "--model", work["spec"], "--backend",
                     "igie", "--dataset-dir", work["root"] / "coco", "--ann", "instances_val2017.json", "--bs", 2,
                     "--results-dir", tmp_path / "res", "--cache-dir", tmp_path / "cache", "--workers", 0,
                     "--no-progress", "--save-detections", dets, "--preflight", 0, env=env)  # counts the run's calls
    assert res.returncode == 0, res.stdout + res.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    imp = next(c for c in calls if c["call"] == "import_model_to_igie")
    assert imp["input_dict"] == {"image": [2, 3, SIZE, SIZE], "im_shape": [2, 2], "scale_factor": [2, 2]}
    names = [c["name"] for c in calls if c["call"] == "set_input"]
    assert names.count("im_shape") == names.count("scale_factor") == names.count("image") == 3   # 5 images, bs 2
    assert len(json.loads(dets.read_text())) == N * len(work["images"])


def test_tvm_backend_feeds_the_extra_inputs(work, tmp_path):
    """Upstream TVM (the optional extra): the extra inputs are compiled into the module's signature and fed from
    the spec like on every runtime, so the Paddle layout gives the known detections here too."""
    pytest.importorskip("tvm.relax.frontend.onnx", reason="the tvm extra (requirements-tvm.txt) is not installed")
    dets = tmp_path / "dets.json"
    res = _run("infer_rtdetr_fp32_accuracy.sh", work, "--backend", "tvm", "--bs", 2, "--workers", 0,
               "--no-progress", "--save-detections", dets, "--preflight", 0)
    assert res.returncode == 0, res.stdout + res.stderr
    got, want = json.loads(dets.read_text()), _expected(work)
    assert len(got) == N * len(work["images"])
    for image_id, rows in want.items():
        mine = sorted((d for d in got if d["image_id"] == image_id), key=lambda d: -d["score"])
        np.testing.assert_allclose([d["score"] for d in mine], [r[0] for r in rows], atol=1e-4)
