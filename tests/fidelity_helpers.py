"""Models for the fidelity tests: graphs with a planted FP16 overflow at a known node."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

AMPLIFY = 60000.0   # any |x| > 65504 / 60000 ~ 1.09 overflows float16 after this Mul


def overflow_graph(path: Path) -> Path:
    """input -> Mul x2 -> Mul x60000 ('amplify': > 65504 for |x| > 0.55) -> Div /60000 ('shrink', back in range)
    -> Add bias -> output. In FP32 the two Muls cancel; in FP16 'amplify' overflows to Inf."""
    f32 = np.float32
    inits = [numpy_helper.from_array(np.array([2.0], f32), "two"),
             numpy_helper.from_array(np.array([AMPLIFY], f32), "big"),
             numpy_helper.from_array(np.linspace(-1, 1, 8).astype(f32), "bias")]
    nodes = [helper.make_node("Mul", ["input", "two"], ["doubled"], name="double"),
             helper.make_node("Mul", ["doubled", "big"], ["huge"], name="amplify"),
             # a Div by 60000, not a Mul by 1/60000: that constant is a float16 subnormal, which a device that
             # flushes them makes 0 (a second, unplanted finding of the FP16 range check)
             helper.make_node("Div", ["huge", "big"], ["back"], name="shrink"),
             helper.make_node("Add", ["back", "bias"], ["output"], name="head")]
    graph = helper.make_graph(nodes, "fp16_overflow",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def plant_overflow(src: Path, dst: Path, tensor: str) -> Path:
    """The graph with `tensor` multiplied by 60000 ('planted_amplify') and divided back ('planted_shrink')
    before its readers: the same outputs in FP32, Inf in FP16."""
    model = onnx.load(str(src))
    readers = [n for n in model.graph.node if tensor in n.input]
    for n in readers:
        n.input[list(n.input).index(tensor)] = "planted_back"
    model.graph.initializer.extend([numpy_helper.from_array(np.array([AMPLIFY], np.float32), "planted_big")])
    producer = max(i for i, n in enumerate(model.graph.node) if tensor in n.output)
    for k, node in enumerate([helper.make_node("Mul", [tensor, "planted_big"], ["planted_huge"], name="planted_amplify"),
                              helper.make_node("Div", ["planted_huge", "planted_big"], ["planted_back"],
                                               name="planted_shrink")]):   # not x 1/60000: a float16 subnormal
        model.graph.node.insert(producer + 1 + k, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


def plant_around(src: Path, dst: Path, tensor: str, after: str, factor: float, readers=None,
                 scale_initializers=()) -> Path:
    """The graph with `tensor` multiplied by `factor` ('planted_amplify', for `readers` only, default all of
    them) and the tensor `after` divided by it ('planted_shrink', for every reader): in FP32 the readers of
    `after` see the same values, in FP16 everything in between holds `factor` times the value (overflow for a
    large factor, underflow for a tiny one). `scale_initializers` are multiplied by the factor instead (a Conv's
    weights and bias: its output is scaled with no amplify node; pass tensor=None)."""
    model = onnx.load(str(src))
    nodes = list(model.graph.node)
    model.graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), "planted_factor"))
    for init in model.graph.initializer:
        if init.name in scale_initializers:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    new = {}
    if tensor is not None:
        for n in nodes:
            if tensor in n.input and (readers is None or n.name in readers):
                n.input[list(n.input).index(tensor)] = "planted_in"
        new[tensor] = helper.make_node("Mul", [tensor, "planted_factor"], ["planted_in"], name="planted_amplify")
    for n in nodes:
        if after in n.input:
            n.input[list(n.input).index(after)] = "planted_out"
    new[after] = helper.make_node("Div", [after, "planted_factor"], ["planted_out"], name="planted_shrink")
    # each planted node right after its input's producer (or first, for a graph input): the order stays valid
    for name, node in new.items():
        at = next((i + 1 for i, n in enumerate(model.graph.node) if name in n.output), 0)
        model.graph.node.insert(at, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst
