"""A small randomly initialised DETR-style detector as ONNX, built with onnx.helper for the regression tests.

Patch embedding (strided Conv) -> tokens -> learned queries attend over the tokens (MatMul/Softmax) ->
class head (Sigmoid) and box head (Sigmoid cx, cy, w, h) -> in-graph end2end outputs: dets [B, Q, 5] in input
pixels (x1, y1, x2, y2, score) and labels [B, Q], as mmdeploy exports DETR-family models.
`slow=True` adds an input-dependent MatMul chain whose result is added at zero weight: the same detections
within float error, many times the compute (a planted speed regression).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE, PATCH, DIM, QUERIES, CLASSES = 64, 8, 32, 20, 3


def query_trunk(patch: int) -> list:
    """Patch embedding, then queries attending over the tokens: images -> hidden [B, Q, D]. Reads the
    initializers patch_w, patch_b, tok_shape and query_w."""
    return [
        helper.make_node("Conv", ["images", "patch_w", "patch_b"], ["patches"], strides=[patch, patch]),
        helper.make_node("Reshape", ["patches", "tok_shape"], ["tok_dt"]),
        helper.make_node("Transpose", ["tok_dt"], ["tok_raw"], perm=[0, 2, 1]),
        helper.make_node("Relu", ["tok_raw"], ["tok"]),                                  # [B, T, D]
        helper.make_node("MatMul", ["tok", "query_w"], ["attn_tq"]),                     # [B, T, Q]
        helper.make_node("Transpose", ["attn_tq"], ["attn_qt"], perm=[0, 2, 1]),
        helper.make_node("Softmax", ["attn_qt"], ["attn"], axis=-1),
        helper.make_node("MatMul", ["attn", "tok"], ["hidden"]),                         # [B, Q, D]
    ]


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def build_tiny_detr(path: Path, seed: int = 0, slow: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    tokens = (SIZE // PATCH) ** 2
    f32 = np.float32
    inits = [
        _init("patch_w", rng.normal(0, 0.2, (DIM, 3, PATCH, PATCH)).astype(f32)),
        _init("patch_b", np.zeros(DIM, f32)),
        _init("tok_shape", np.array([0, DIM, tokens], np.int64)),
        _init("query_w", rng.normal(0, 0.3, (DIM, QUERIES)).astype(f32)),
        _init("cls_w", rng.normal(0, 0.5, (DIM, CLASSES)).astype(f32)),
        _init("box_w", rng.normal(0, 0.5, (DIM, 4)).astype(f32)),
        # cx, cy, w, h -> x1, y1, x2, y2 (columns), then normalised -> input pixels
        _init("to_xyxy", np.array([[1, 0, 1, 0], [0, 1, 0, 1], [-.5, 0, .5, 0], [0, -.5, 0, .5]], f32)),
        _init("scale", np.full(4, SIZE, f32)),
    ]
    nodes = [
        *query_trunk(PATCH),
        helper.make_node("MatMul", ["hidden", "cls_w"], ["cls_logits"]),
        helper.make_node("MatMul", ["hidden", "box_w"], ["box_logits"]),
        helper.make_node("Sigmoid", ["box_logits"], ["cxcywh"]),
        helper.make_node("MatMul", ["cxcywh", "to_xyxy"], ["xyxy_n"]),
        helper.make_node("Mul", ["xyxy_n", "scale"], ["xyxy"]),
    ]
    logits = "cls_logits"
    if slow:
        width = 512
        inits += [_init("slow_shape", np.array([0, 3 * SIZE, SIZE], np.int64)),
                  _init("slow_in", rng.normal(0, 0.05, (SIZE, width)).astype(f32)),
                  _init("zero", np.zeros(1, f32))]
        nodes += [helper.make_node("Reshape", ["images", "slow_shape"], ["rows"]),
                  helper.make_node("MatMul", ["rows", "slow_in"], ["s0"])]
        for i in range(3):
            inits.append(_init(f"slow_w{i}", rng.normal(0, 0.05, (width, width)).astype(f32)))
            nodes += [helper.make_node("MatMul", [f"s{i}", f"slow_w{i}"], [f"m{i}"]),
                      helper.make_node("Tanh", [f"m{i}"], [f"s{i + 1}"])]
        nodes += [helper.make_node("ReduceMean", ["s3"], ["s_mean"], axes=[1, 2], keepdims=1),
                  helper.make_node("Mul", ["s_mean", "zero"], ["s_zero"]),
                  helper.make_node("Add", ["cls_logits", "s_zero"], ["cls_logits_slow"])]
        logits = "cls_logits_slow"
    nodes += [
        helper.make_node("Sigmoid", [logits], ["prob"]),
        helper.make_node("ReduceMax", ["prob"], ["score"], axes=[-1], keepdims=1),
        # ArgMax reads a copy: onnxruntime's float16 converter gives the FP32 casts it inserts in front of blocked
        # nodes a name made from the input's name, so two blocked readers of one tensor make an invalid graph
        helper.make_node("Identity", ["prob"], ["prob_for_labels"]),
        helper.make_node("ArgMax", ["prob_for_labels"], ["labels"], axis=-1, keepdims=0),
        helper.make_node("Concat", ["xyxy", "score"], ["dets"], axis=-1),
    ]
    for i, node in enumerate(nodes):
        node.name = f"{node.op_type}_{i}"
    graph = helper.make_graph(
        nodes, "tiny_detr" + ("_slow" if slow else ""),
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("dets", TensorProto.FLOAT, ["batch", QUERIES, 5]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["batch", QUERIES])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="suite-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def tiny_detr_spec(path: Path, onnx_path: Path, broken_onnx: Path | None = None, name: str = "tinydetr") -> Path:
    """A model.yaml for the tiny detector (plus a `broken` variant whose ONNX is not a model, when given)."""
    text = f"""schema: 1
name: {name}
default_variant: tiny
variants:
  tiny:
    onnx: {onnx_path}
    input: {{name: images, height: {SIZE}, width: {SIZE}}}
    preprocess: {{resize: stretch, color: rgb, mean: [123.675, 116.28, 103.53], std: [58.395, 57.12, 57.375]}}
    output: {{convention: end2end, dets: dets, labels: labels, score_threshold: 0.0}}
    labels: [1, 2, 3]
    evaluation: {{annotation: instances_val2017_person_subset350.json, categories: [1]}}
    build: {{fp16_block_ops: [ArgMax, ReduceMax]}}
    matrix:
      precisions: [fp32, fp16]
      batch_sizes: [1, 2]
      accuracy_batch_sizes: [1]
"""
    if broken_onnx is not None:
        text += f"""  broken:
    onnx: {broken_onnx}
    input: {{name: images, height: {SIZE}, width: {SIZE}}}
    preprocess: {{resize: stretch}}
    output: {{convention: end2end}}
    labels: [1, 2, 3]
    evaluation: {{annotation: instances_val2017_person_subset350.json, categories: [1]}}
    matrix: {{precisions: [fp32], batch_sizes: [1], accuracy_batch_sizes: []}}
"""
    path.write_text(text)
    return path
