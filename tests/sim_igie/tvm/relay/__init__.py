import json
import os
import time

from .._sim import log
from . import import_model, quantize  # noqa: F401

PRECISIONS = ("fp32", "fp16", "int8")


class BuiltLib:
    def __init__(self, onnx_bytes: bytes, header: dict):
        self.onnx_bytes, self.header = onnx_bytes, header

    def export_library(self, path: str):
        log("lib.export_library", path=path)
        # TVM picks the linker by the suffix: a name not ending in .so/.tar is not a shared library
        if not str(path).endswith((".so", ".tar")):
            raise ValueError(f"simulated IGIE: export_library cannot tell the format of {path!r} (no .so suffix)")
        data = json.dumps(self.header).encode() + b"\n" + self.onnx_bytes
        stall = float(os.environ.get("SIM_IGIE_EXPORT_STALL", "0"))
        with open(path, "wb") as f:
            if stall:  # tests: a build killed half-way through writing its engine
                f.write(data[:len(data) // 2])
                f.flush()
                log("export_library.stalled", path=path)
                time.sleep(stall)
            f.write(data[f.tell():])


def build(mod, target=None, params=None, precision="fp32", **kwargs):
    log("tvm.relay.build", target=str(target), precision=precision, params=sorted(params or {}), kwargs=kwargs)
    if getattr(target, "kind", None) is None or target.kind.name != "iluvatar":
        raise ValueError("simulated IGIE builds only for tvm.target.iluvatar")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision}")
    import onnx
    model = onnx.load(mod.path)
    q_ops = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"}
    quantised = any(n.op_type in q_ops for n in model.graph.node)
    # the vendor's INT8 flow: an ONNX quantised beforehand (ONNX Runtime, calibration data), built with
    # precision="int8"; the simulation runs that quantised graph as it is
    if precision == "int8" and not (quantised or getattr(mod, "quantized", False)):
        raise ValueError("simulated IGIE: an int8 build needs a quantised ONNX (QuantizeLinear/DequantizeLinear)")
    log("tvm.relay.build.graph", quantised=quantised, opset=next(
        (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0))
    if precision == "fp16":
        from onnxruntime.transformers import float16
        model = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=list(
            float16.DEFAULT_OP_BLOCK_LIST) + ["NonMaxSuppression", "TopK"])
    header = {"input_dict": mod.input_dict, "precision": precision, "target": str(target)}
    return BuiltLib(model.SerializeToString(), header)
