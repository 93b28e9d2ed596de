"""RT-DETR through the transformers path: random tiny networks -> export.py (torch export, onnxsim, detection-level
check) -> the suite's accuracy and performance scripts (FP32 and FP16) on a synthetic COCO set."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from helpers import run_script  # noqa: E402
from synthetic_coco import make_synthetic_coco  # noqa: E402
from tiny_rtdetr import SIZE, save_hf_dir, tiny_network, tiny_rtdetr_spec  # noqa: E402

import export as rtdetr_export  # noqa: E402  (models/rtdetr/export.py, on sys.path through tiny_rtdetr)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("rtdetr")
    make_synthetic_coco(root / "coco", n_images=6, seed=3)
    return {"root": root, "spec": tiny_rtdetr_spec(root / "model.yaml"),
            "ckpt": save_hf_dir(tiny_network("rt_detr", seed=1), root / "hf_r")}


def _records(results_dir):
    return [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]


def test_export_check_agrees_and_batch_stays_dynamic(work):
    """The scripts' own export path (export_cached, into the cache the script test below then hits)."""
    from common.export.pipeline import export_cached
    from common.config.specs import load_spec
    variant = load_spec(work["spec"]).variant("tiny")
    out = export_cached(variant, work["ckpt"], None, work["root"] / "cache" / "exports")
    x = np.random.default_rng(0).random((3, 3, SIZE, SIZE), np.float32)
    res = rtdetr_export.check_onnx(rtdetr_export.load_network(work["ckpt"], None, variant), out, x)
    assert res["agreement"] >= 0.98 and res["torch_detections"] >= 100, res     # 3 images x many detections
    import onnx
    model = onnx.load(str(out))
    assert not model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    assert {o.name for o in model.graph.output} == {"logits", "pred_boxes"}
    assert any(n.op_type == "GridSample" for n in model.graph.node)
    work["onnx"] = out


def test_check_fails_for_a_different_network(work):
    """The check metric can fail: a network with other weights against this ONNX agrees on almost nothing."""
    out = work.get("onnx")
    if out is None:
        pytest.skip("needs the export of the previous test")
    other = tiny_network("rt_detr", seed=7)
    x = np.random.default_rng(0).random((2, 3, SIZE, SIZE), np.float32)
    res = rtdetr_export.check_onnx(other, out, x)
    assert res["agreement"] < 0.2, res


def test_scripts_from_checkpoint_fp16_accuracy_fp32_performance(work):
    root, results = work["root"], work["root"] / "results"
    common = ["--model", work["spec"], "--checkpoint", work["ckpt"], "--dataset-dir", root / "coco",
              "--ann", "instances_val2017.json", "--results-dir", results, "--cache-dir", root / "cache",
              "--workers", 0]
    res = run_script("models/rtdetr/scripts/infer_rtdetr_fp16_accuracy.sh", *common, "--bs", 2, "--no-progress")
    assert res.returncode == 0, res.stdout + res.stderr
    perf = [a for a in map(str, common) if a != "--workers" and a != "0"]
    res = run_script("models/rtdetr/scripts/infer_rtdetr_fp32_performance.sh", *perf, "--warmup", 0.1,
                     "--min-duration", 0.3, "--min-iters", 3)
    assert res.returncode == 0, res.stdout + res.stderr
    recs = _records(results)
    fp16 = next(r for r in recs if r["kind"] == "accuracy" and r["precision"] == "fp16")
    perf_rec = next(r for r in recs if r["kind"] == "performance" and r["precision"] == "fp32")
    # exported once, cached (by the first test when it ran): both runs used the same ONNX; detections came out,
    # at most max_per_img per image
    assert perf_rec["onnx"]["sha256"] == fp16["onnx"]["sha256"]
    assert 6 <= fp16["num_detections"] <= 6 * 50 and fp16["reasons"] == []
    assert perf_rec["metrics"]["fps"] > 0 and perf_rec["verdict"] != "fail"


def test_fp16_engine_keeps_sensitive_ops_float32(work):
    import onnx
    engines = [p for p in (work["root"] / "cache").rglob("*.onnx") if "exports" not in p.parts]
    if not engines:
        pytest.skip("needs the FP16 engine of the previous test")
    model = onnx.load(str(engines[0]))
    f16 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    assert f16, "no float16 weights: not an FP16 engine"
    layer_norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert layer_norms and not any(i in f16 for n in layer_norms for i in n.input)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert all(n.input[1] in f16 for n in convs)
    # and its detections agree with the FP32 graph's (the comparator, export --check's metric, FP16 tolerance)
    import onnxruntime as ort

    from common.compare.comparator import FunctionRunner, compare, detections_agree, run_all
    fp32 = next((work["root"] / "cache" / "exports").rglob("*.onnx"))
    x = np.random.default_rng(5).random((2, 3, SIZE, SIZE), np.float32)
    names = ["logits", "pred_boxes"]

    def ort_runner(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return FunctionRunner(lambda x: session.run(names, {"images": x}), names)

    runners = {"fp32": ort_runner(fp32), "fp16": ort_runner(engines[0])}
    verdict = compare(run_all(runners, [x]), detections_agree(
        lambda out: rtdetr_export._detections(out, SIZE, SIZE, 100, 0.05), 0.9, 0.02, min_agreement=0.9))
    (v,) = verdict.values()
    assert v.details["reference_detections"] > 0 and v.ok, v.details


@pytest.mark.slow
def test_v2_discrete_has_no_gridsample_and_agrees(tmp_path, capsys):
    ckpt = save_hf_dir(tiny_network("rt_detr_v2", seed=2), tmp_path / "hf_v2")
    spec = tiny_rtdetr_spec(tmp_path / "model.yaml")
    out = tmp_path / "v2d.onnx"
    rc = rtdetr_export.main(["--checkpoint", str(ckpt), "--model", str(spec), "--variant", "tiny-v2-discrete",
                             "--out", str(out), "--check"])
    captured = capsys.readouterr()
    text = captured.out
    assert rc == 0, text + captured.err
    import onnx
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "GridSample" not in ops
    assert json.loads(text[text.index("{"):text.rindex("}") + 1])["agreement"] >= 0.98


def test_bad_checkpoints_are_input_errors(tmp_path, work):
    from common.errors import InputError
    with pytest.raises(InputError, match="safetensors"):
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "config.json").write_text(json.dumps({"model_type": "rt_detr"}))
        rtdetr_export.load_network(tmp_path / "d", None)
    with pytest.raises(InputError, match="model_type"):
        (tmp_path / "e").mkdir()
        (tmp_path / "e" / "config.json").write_text(json.dumps({"model_type": "bert"}))
        rtdetr_export.load_network(tmp_path / "e", None)
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="PyTorch checkpoint"):
        rtdetr_export.load_network(bad, work["ckpt"] / "config.json")
