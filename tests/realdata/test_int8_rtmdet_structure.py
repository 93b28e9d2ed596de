"""INT8 by structure on the shared RTMDet-nano graph: its post-processing (decode, score Sigmoid, TopK, NMS) is
found from the graph and never quantised nor calibrated; the keep rule finds its depthwise Convs from real
calibration statistics (set-B images, never evaluation images here)."""
import json
import shutil

import numpy as np
import pytest

ANN_A = "instances_val2017_subset150.json"
SET_B = "person_keypoints_val2017_single_person_subset200.json"


def _set_b_calibration(shared_data, folder, n):
    """A calibration set of the first n set-B images (copies: a link into the evaluation dir is refused),
    checked against set A as the evaluation set."""
    from common.config.specs import load_model
    from common.data.calibration import CalibrationSet
    from common.data.coco import DatasetRequest
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(im["file_name"] for im in
                   json.loads((shared_data / "coco" / "annotations" / SET_B).read_text())["images"])[:n]
    for name in names:
        shutil.copy(shared_data / "coco" / "val2017" / name, folder / name)
    return CalibrationSet.for_variant(str(folder), load_model("rtmdet").variant(), n,
                                      DatasetRequest(str(shared_data / "coco"), ANN_A))


def test_rtmdet_postprocess_found_from_the_graph(rtmdet_onnx):
    import onnx

    from common.runtime.int8_structure import split_network
    model = onnx.load(str(rtmdet_onnx))
    split = split_network(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    post_ops = {ops[n] for n in split.postprocess}
    assert {"NonMaxSuppression", "TopK", "Sigmoid", "Gather", "Reshape"} <= post_ops
    assert all(ops[n] != "Conv" for n in split.postprocess)
    assert sum(ops[n] == "Conv" for n in split.network) == 123
    # three levels, a class and a box head each: the raw head tensors the nano-person-raw variant cuts at
    assert len(split.head_outputs) == 6 and {"y", "y.8", "y.16"} <= set(split.head_outputs)


@pytest.mark.slow
def test_postprocess_is_never_quantised_nor_calibrated(rtmdet_onnx, shared_data, tmp_path):
    """Every op type ONNX Runtime quantises, with percentile calibration (whose histograms fail on the
    variable-size tensors after NMS): no QuantizeLinear / DequantizeLinear touches a post-processing node."""
    import onnx
    import onnxruntime as ort

    from common.runtime.int8_structure import split_network
    from common.runtime.quantize import Int8Settings, prepare_float_model, quantize_onnx
    calib = _set_b_calibration(shared_data, tmp_path / "calib", 2)
    settings = Int8Settings(op_types=(), method="percentile", calib_images=2, rule=False)
    q = tmp_path / "q.onnx"
    info = quantize_onnx(rtmdet_onnx, q, calib, settings, "input", tmp_path / "cache")
    # the graph quantised is the opset-13 conversion (per-channel QDQ), which adds a few constant nodes
    fmodel = onnx.load(str(prepare_float_model(rtmdet_onnx, settings, tmp_path / "f.onnx")))
    post = set(split_network(fmodel).postprocess)
    assert info["postprocess_nodes"] == len(post) > 150
    qm = onnx.load(str(q))
    producer = {o: n for n in qm.graph.node for o in n.output}
    consumers = {}
    for n in qm.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    touched = sorted({n.name for n in qm.graph.node if n.name in post and (
        any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)
        or any(c.op_type == "QuantizeLinear" for o in n.output for c in consumers.get(o, [])))})
    assert touched == [], touched
    assert info["int8_convs"] == 123   # the network itself is quantised throughout
    ranges = json.loads(next((tmp_path / "cache" / "calibration").iterdir()).read_text())
    post_tensors = {o for n in fmodel.graph.node if n.name in post for o in n.output}
    assert not [t for t in post_tensors if f'"{t}"' in json.dumps(ranges)]
    sess = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
    dets = sess.run(None, {"input": next(calib.batches(1))})[0]
    assert np.isfinite(dets).all()


@pytest.mark.slow
def test_rule_keeps_rtmdet_depthwise_convs_with_reasons(rtmdet_onnx, shared_data, tmp_path):
    """From 8 real calibration images: the per-tensor targets keep (nearly) every depthwise Conv, each with its
    input range spread said; a per-channel target keeps none; the build leaves exactly those in FP32."""
    import onnx

    from common.runtime.int8_structure import conv_input_stats, keep_by_rule, target
    from common.runtime.quantize import Int8Settings, quantize_onnx
    calib = _set_b_calibration(shared_data, tmp_path / "calib", 8)
    model = onnx.load(str(rtmdet_onnx))
    stats = conv_input_stats(model, calib.batches(1), "input")
    depthwise = {s.node for s in stats if s.depthwise}
    assert len(depthwise) == 41
    kept = dict(keep_by_rule(stats, target("onnxruntime")))
    assert len(depthwise & set(kept)) >= 38 and "Conv_9" in kept
    assert len(kept) <= 123 - 80
    assert all(kept[n].startswith("depthwise, input range spread") for n in depthwise & set(kept))
    assert keep_by_rule(stats, target("per_channel")) == []
    q = tmp_path / "q.onnx"
    info = quantize_onnx(rtmdet_onnx, q, calib, Int8Settings(calib_images=8), "input", tmp_path / "cache")
    assert dict(info["kept_by_rule"]) == kept
    assert info["int8_convs"] == 123 - len(kept)
    # kept means float inputs too, also where a kept Conv shares its input with an INT8 one (Conv_212, Conv_209)
    qm = onnx.load(str(q))
    producer = {o: n for n in qm.graph.node for o in n.output}
    rounded = [n.name for n in qm.graph.node if n.name in kept and n.input[0] in producer
               and producer[n.input[0]].op_type == "DequantizeLinear"]
    assert rounded == [], rounded


@pytest.mark.slow
def test_nncf_quantizer_for_onnx_keeps_the_same_exclusions(rtmdet_onnx, shared_data, tmp_path):
    """int8.quantizer nncf: NNCF writes the QDQ ONNX, with the post-processing and the rule's Convs left float."""
    pytest.importorskip("nncf", reason="nncf is not installed (optional layer: requirements-openvino.txt)")
    import onnx

    from common.runtime.int8_structure import split_network
    from common.runtime.quantize import Int8Settings, prepare_float_model, quantize_onnx, read_int8_section
    assert read_int8_section({"quantizer": "nncf"}).quantizer == "nncf"
    calib = _set_b_calibration(shared_data, tmp_path / "calib", 4)
    settings = Int8Settings(calib_images=4, quantizer="nncf")
    q = tmp_path / "q.onnx"
    info = quantize_onnx(rtmdet_onnx, q, calib, settings, "input", tmp_path / "cache")
    kept = {n for n, _ in info["kept_by_rule"]}
    # NNCF places an activation's quantiser after a Conv + activation pattern: a Conv after a kept one reads a
    # float input, so fewer than 123 - kept are INT8 (69 of 82 here)
    assert len(kept) >= 38 and 60 <= info["int8_convs"] <= 123 - len(kept)
    qm = onnx.load(str(q))
    post = set(split_network(onnx.load(str(prepare_float_model(rtmdet_onnx, settings, tmp_path / "f.onnx"))))
               .postprocess)
    producer = {o: n for n in qm.graph.node for o in n.output}
    dequantised = lambda n: any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"  # noqa: E731
                                for i in n.input)
    assert not [n.name for n in qm.graph.node if n.name in post and dequantised(n)]
    assert not [n.name for n in qm.graph.node if n.name in kept and dequantised(n)]
