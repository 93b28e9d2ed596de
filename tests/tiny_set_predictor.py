"""A small random set-prediction (RT-DETR-like) network as pure ONNX, built with onnx.helper, in the output layouts
of the RT-DETR lines: no torch, no ultralytics, so the tests run in CI.

Patch embedding (strided Conv) -> tokens -> QUERIES learned queries attend over the tokens -> class logits
[B, Q, C] and boxes sigmoid(cx, cy, w, h) [B, Q, 4] (normalised; w, h up to 1, so many boxes extend past the image,
as a random network's do). The heads then take one of these layouts:

- "detr":        logits [B, Q, C] and pred_boxes [B, Q, 4] (transformers / the authors' RT-DETR before their
                 post-processor);
- "ultra6":      output0 [B, Q, 6] = (cx, cy, w, h, score, class), the layout of Ultralytics >= 8.4's exported
                 RTDETRDecoder: sigmoid scores, top Q (query, class) pairs over all Q x C, best first, class as float;
- "ultra84":     output0 [B, Q, 4 + C] = boxes then per-class sigmoid probabilities (older Ultralytics exports);
- "ultra6_logits" / "ultra84_logits": the same with raw logits in the score slots: garbage a decoder must refuse.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tiny_detr import query_trunk

SIZE, PATCH, DIM, QUERIES, CLASSES = 64, 8, 32, 300, 80
LAYOUTS = ("detr", "ultra6", "ultra84", "ultra6_logits", "ultra84_logits")


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def build_set_predictor(path: Path, layout: str, seed: int = 0) -> Path:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    rng = np.random.default_rng(seed)
    tokens = (SIZE // PATCH) ** 2
    f32 = np.float32
    inits = [
        _init("patch_w", rng.normal(0, 0.2, (DIM, 3, PATCH, PATCH)).astype(f32)),
        _init("patch_b", rng.normal(0, 0.2, DIM).astype(f32)),
        _init("tok_shape", np.array([0, DIM, tokens], np.int64)),
        _init("query_w", rng.normal(0, 0.3, (DIM, QUERIES)).astype(f32)),
        # class scale large enough that scores spread over (0, 1): a top-k then has no float-level near-ties
        _init("cls_w", rng.normal(0, 0.6, (DIM, CLASSES)).astype(f32)),
        _init("cls_b", rng.normal(-2.0, 1.0, CLASSES).astype(f32)),
        _init("box_w", rng.normal(0, 0.3, (DIM, 4)).astype(f32)),
        _init("box_b", np.array([-1.5, -1.5, -1.5, -1.5], f32)),
    ]
    nodes = [
        *query_trunk(PATCH),
        helper.make_node("MatMul", ["hidden", "cls_w"], ["cls_mm"]),
        helper.make_node("Add", ["cls_mm", "cls_b"], ["cls_logits"]),                    # [B, Q, C]
        helper.make_node("MatMul", ["hidden", "box_w"], ["box_mm"]),
        helper.make_node("Add", ["box_mm", "box_b"], ["box_logits"]),
        helper.make_node("Sigmoid", ["box_logits"], ["boxes"]),                          # [B, Q, 4] cxcywh
    ]
    raw = layout.endswith("_logits")
    if layout == "detr":
        nodes.append(helper.make_node("Identity", ["cls_logits"], ["logits"]))
        nodes.append(helper.make_node("Identity", ["boxes"], ["pred_boxes"]))
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", QUERIES, CLASSES]),
                   helper.make_tensor_value_info("pred_boxes", TensorProto.FLOAT, ["batch", QUERIES, 4])]
    else:
        nodes.append(helper.make_node("Identity" if raw else "Sigmoid", ["cls_logits"], ["probs"]))
        if layout.startswith("ultra84"):
            nodes.append(helper.make_node("Concat", ["boxes", "probs"], ["output0"], axis=-1))
            width = 4 + CLASSES
        else:   # Ultralytics 8.4's RTDETRDecoder.postprocess, op for op
            inits += [_init("flat_shape", np.array([0, -1], np.int64)), _init("k", np.array([QUERIES], np.int64)),
                      _init("nc", np.array(CLASSES, np.int64)), _init("axis2", np.array([2], np.int64)),
                      _init("four", np.array([1, 1, 4], np.int64))]
            nodes += [
                helper.make_node("Reshape", ["probs", "flat_shape"], ["flat"]),               # [B, Q * C]
                helper.make_node("TopK", ["flat", "k"], ["top_scores", "top_index"], axis=-1, largest=1, sorted=1),
                helper.make_node("Div", ["top_index", "nc"], ["query_idx"]),                 # int64: floor
                helper.make_node("Mod", ["top_index", "nc"], ["class_idx"]),
                helper.make_node("Unsqueeze", ["query_idx", "axis2"], ["query_idx3"]),
                helper.make_node("Expand", ["query_idx3", "four"], ["gather_idx"]),
                helper.make_node("GatherElements", ["boxes", "gather_idx"], ["top_boxes"], axis=1),
                helper.make_node("Unsqueeze", ["top_scores", "axis2"], ["score_col"]),
                helper.make_node("Cast", ["class_idx"], ["class_f"], to=TensorProto.FLOAT),
                helper.make_node("Unsqueeze", ["class_f", "axis2"], ["class_col"]),
                helper.make_node("Concat", ["top_boxes", "score_col", "class_col"], ["output0"], axis=-1),
            ]
            width = 6
        outputs = [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", QUERIES, width])]
    for i, node in enumerate(nodes):
        node.name = f"{node.op_type}_{i}"
    graph = helper.make_graph(
        nodes, f"tiny_set_predictor_{layout}",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="suite-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def set_predictor_spec(path: Path, onnx_paths: dict, name: str = "tinyset") -> Path:
    """A model.yaml with one variant per built layout (keys of onnx_paths), decoded as each line's spec does."""
    lines = [f"schema: 1\nname: {name}\nvariants:"]
    for layout, onnx_path in onnx_paths.items():
        if layout == "detr":
            output = "{convention: detr, logits: logits, boxes: pred_boxes, max_per_img: 300, score_threshold: 0.01}"
        else:
            output = "{convention: ultralytics, output: output0, max_per_img: 300, score_threshold: 0.01}"
        lines.append(f"""  {layout.replace('_', '-')}:
    onnx: {onnx_path}
    input: {{name: images, height: {SIZE}, width: {SIZE}}}
    preprocess: {{resize: stretch, color: rgb, mean: [0, 0, 0], std: [255, 255, 255]}}
    output: {output}
    labels: coco80
    evaluation: {{annotation: instances_val2017.json}}""")
    path.write_text("\n".join(lines) + "\n")
    return path
