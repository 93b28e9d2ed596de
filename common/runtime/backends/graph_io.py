"""An ONNX graph's inputs and outputs, read once for every backend: output names in graph order, and the spec's
constant extra inputs checked against the graph's inputs (each declared one must exist, every graph input must be
fed) in the dtype the graph wants."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import InputError


@dataclass(frozen=True)
class GraphIO:
    inputs: dict  # name -> (numpy dtype or None when not a float tensor, shape list: int or None per dim)
    outputs: list  # output names in graph order


_FLOATS = {1: np.float32, 10: np.float16, 11: np.float64}  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE


def graph_io(onnx_path: Path) -> GraphIO:
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # onnx raises several decode error types
        raise InputError(f"cannot load ONNX model ({type(exc).__name__})", onnx_path) from None
    inits = {i.name for i in model.graph.initializer}
    inputs = {}
    for i in model.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        inputs[i.name] = (
            _FLOATS.get(t.elem_type),
            [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim],
        )
    return GraphIO(inputs, [o.name for o in model.graph.output])


def extra_input_arrays(io: GraphIO, input_name: str, extra_inputs, onnx_path: Path) -> dict:
    """{name: [K] array} for the spec's extra inputs ((name, values) pairs), checked against the graph."""
    declared = dict(extra_inputs)
    if input_name not in io.inputs:
        raise InputError(f"the model has no input '{input_name}' (it has: {', '.join(io.inputs)})", onnx_path)
    unknown = sorted(set(declared) - set(io.inputs))
    unfed = sorted(set(io.inputs) - set(declared) - {input_name})
    if unknown or unfed:
        raise InputError(
            f"graph inputs {sorted(io.inputs)}; the spec feeds '{input_name}'"
            + (f" and declares extra inputs {unknown} the graph does not have" if unknown else "")
            + (f"; inputs {unfed} are not fed: declare them under input.extra" if unfed else ""),
            onnx_path,
        )
    arrays = {}
    for name, values in declared.items():
        dtype = io.inputs[name][0]
        if dtype is None:
            raise InputError(f"extra input '{name}' is not a float tensor; the suite feeds float tensors", onnx_path)
        arrays[name] = np.asarray(values, dtype)
    return arrays
