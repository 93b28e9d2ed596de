"""A small hand-built ONNX in the layout of an RT-DETR exported from PaddleDetection (RT-DETRv3 as the IGIE recipe
runs it), with known answers.

Inputs: image [B, 3, S, S], im_shape [B, 2] (h, w of the network input), scale_factor [B, 2] (input / original).
Outputs: rows [B * N, 6] of (class, score, x1, y1, x2, y2) and bbox_num [B] (rows per image), boxes scaled like
Paddle's DETR post-processing: normalised boxes x (im_shape / scale_factor), i.e. original image pixels when the
true scale factors are fed, input pixels when scale_factor = 1.

The N boxes are fixed (BOXES_NORM, normalised xyxy); the class scores depend on the image (its mean), so the
graph computes something per image. `poison=True` turns the scores into NaN (the FP16-overflow failure mode).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE, N, C = 64, 4, 3
BOXES_NORM = np.array([[0.10, 0.20, 0.40, 0.60], [0.50, 0.10, 0.90, 0.45], [0.05, 0.55, 0.35, 0.95],
                       [0.60, 0.60, 0.95, 0.90]], np.float32)
ROWS, COUNT = "multiclass_nms3_0.tmp_0", "multiclass_nms3_0.tmp_2"    # Paddle-style tensor names


def build_paddle_rtdetr(path: Path, seed: int = 0, poison: bool = False, with_extra_inputs: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    f32 = np.float32
    # per (query, class): a strong bias picks one class per query, with scores well apart
    bias = np.full((N, C), -4.0, f32)
    bias[np.arange(N), np.arange(N) % C] = np.array([3.0, 1.5, 0.5, -0.5], f32)[:N]
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.1, (1, N * C)).astype(f32), "w_cls"),
        numpy_helper.from_array(bias.reshape(N * C), "b_cls"),
        numpy_helper.from_array(np.array([-1, N, C], np.int64), "shape_bnc"),
        numpy_helper.from_array(np.array([-1, 6], np.int64), "shape_rows"),
        numpy_helper.from_array(BOXES_NORM[None], "boxes_norm"),
        numpy_helper.from_array(np.array([1, 0, 1, 0], np.int64), "whwh_index"),
        numpy_helper.from_array(np.array([N], np.int32), "n_per_image"),
        numpy_helper.from_array(np.array([0], np.int64), "zero_index"),
        numpy_helper.from_array(np.array([2.0], f32), "two"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "one_axis"], ["mean_b1"]),
        helper.make_node("MatMul", ["mean_b1", "w_cls"], ["cls_w"]),
        helper.make_node("Add", ["cls_w", "b_cls"], ["cls_flat"]),
        helper.make_node("Reshape", ["cls_flat", "shape_bnc"], ["cls"]),
        helper.make_node("Sigmoid", ["cls"], ["probs"]),
        helper.make_node("ReduceMax", ["probs"], ["score_clean"], axes=[-1], keepdims=1),
        helper.make_node("ArgMax", ["probs"], ["label"], axis=-1, keepdims=1),
        helper.make_node("Cast", ["label"], ["label_f"], to=TensorProto.FLOAT),
    ]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "one_axis"))
    score = "score_clean"
    if poison:
        nodes += [helper.make_node("Sub", ["score_clean", "two"], ["neg"]),
                  helper.make_node("Sqrt", ["neg"], ["score_nan"])]
        score = "score_nan"
    if with_extra_inputs:
        nodes += [helper.make_node("Div", ["im_shape", "scale_factor"], ["origin_hw"]),
                  helper.make_node("Gather", ["origin_hw", "whwh_index"], ["origin_whwh"], axis=1),
                  helper.make_node("Unsqueeze", ["origin_whwh", "one_axis"], ["scale_b14"]),
                  helper.make_node("Mul", ["boxes_norm", "scale_b14"], ["boxes_px"])]
    else:
        inits.append(numpy_helper.from_array(np.full((1, 1, 4), SIZE, f32), "size_whwh"))
        nodes += [helper.make_node("Mul", ["boxes_norm", "size_whwh"], ["boxes_b"]),
                  helper.make_node("Shape", ["image"], ["img_shape"]),
                  helper.make_node("Gather", ["img_shape", "zero_index"], ["batch1"]),
                  helper.make_node("Concat", ["batch1", "n_and_4"], ["bn4"], axis=0),
                  helper.make_node("Expand", ["boxes_b", "bn4"], ["boxes_px"])]
        inits.append(numpy_helper.from_array(np.array([N, 4], np.int64), "n_and_4"))
    nodes += [
        helper.make_node("Concat", ["label_f", score, "boxes_px"], ["rows_bn6"], axis=-1),
        helper.make_node("Reshape", ["rows_bn6", "shape_rows"], [ROWS]),
        helper.make_node("Shape", ["image"], ["image_shape"]),
        helper.make_node("Gather", ["image_shape", "zero_index"], ["batch"]),
        helper.make_node("Expand", ["n_per_image", "batch"], [COUNT]),
    ]
    for i, node in enumerate(nodes):
        node.name = f"{node.op_type}_{i}"
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])]
    if with_extra_inputs:
        inputs += [helper.make_tensor_value_info("im_shape", TensorProto.FLOAT, ["batch", 2]),
                   helper.make_tensor_value_info("scale_factor", TensorProto.FLOAT, ["batch", 2])]
    graph = helper.make_graph(nodes, "paddle_rtdetr_layout", inputs,
                              [helper.make_tensor_value_info(ROWS, TensorProto.FLOAT, ["rows", 6]),
                               helper.make_tensor_value_info(COUNT, TensorProto.INT32, ["batch"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)], producer_name="suite-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def expected_scores(images_chw: np.ndarray, path: Path) -> np.ndarray:
    """[B, N] scores the graph gives for preprocessed images (numpy, independent of ONNX Runtime)."""
    model = onnx.load(str(path))
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w_cls"))
    b = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "b_cls"))
    logits = images_chw.mean(axis=(1, 2, 3))[:, None] @ w + b
    return (1 / (1 + np.exp(-logits.reshape(-1, N, C)))).max(-1)


def paddle_spec(path: Path, onnx_path: Path, name: str = "rtdetr", extra: str | None = None) -> Path:
    extra = extra if extra is not None else f"{{im_shape: [{SIZE}, {SIZE}], scale_factor: [1.0, 1.0]}}"
    path.write_text(f"""schema: 1
name: {name}
default_variant: paddle
variants:
  paddle:
    onnx: {onnx_path}
    input: {{name: image, height: {SIZE}, width: {SIZE}, extra: {extra}}}
    preprocess: {{resize: stretch, color: rgb, mean: [0, 0, 0], std: [255, 255, 255]}}
    output: {{convention: paddle_rows, count: {COUNT}, max_per_img: 300, score_threshold: 0.001}}
    labels: [1, 3, 18]
    evaluation: {{annotation: instances_val2017.json}}
    build: {{fp16_block_ops: [ArgMax, ReduceMax]}}
    fidelity: {{outputs: []}}   # stacked rows: their count is data-dependent, so detections are judged
""")
    return path
