"""scripts/int8_error_sources.py's graph variants: a QDQ graph with chosen Convs reading float activations and / or
float weights, on a small synthetic network quantised by the suite's own quantiser."""
from __future__ import annotations

import importlib.util

import numpy as np
from helpers import REPO


def _script():
    spec = importlib.util.spec_from_file_location("int8_error_sources", REPO / "scripts" / "int8_error_sources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_float_exactly_what_they_name(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from common.runtime.quantize import Int8Settings, quantize_onnx
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
             helper.make_node("Conv", ["r1", "w2"], ["out"], name="c2")]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                          ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    src = tmp_path / "two.onnx"
    fmodel = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(fmodel, str(src))
    xs = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(4)]

    class Calib:
        sha256 = "two"

        @staticmethod
        def batches(n):
            return iter(xs)

    quantize_onnx(src, tmp_path / "q.onnx", Calib, Int8Settings(rule=False, calib_images=4), "input", tmp_path / "c")
    q = onnx.load(str(tmp_path / "q.onnx"))
    s = _script()
    assert s.int8_conv_names(q) == ["c1", "c2"]

    def reads(m, conv, k):
        producer = {o: n for n in m.graph.node for o in n.output}
        n = next(n for n in m.graph.node if n.name == conv)
        p = producer.get(n.input[k])
        return p.op_type if p is not None else n.input[k]

    act = s.qdq_variant(q, fmodel, act_float=["c2"])
    assert reads(act, "c2", 0) == "Relu" and reads(act, "c1", 0) == "DequantizeLinear"
    assert reads(act, "c2", 1) == "DequantizeLinear"
    wts = s.qdq_variant(q, fmodel, w_float=["c1"])
    assert reads(wts, "c1", 1) == "w1" and reads(wts, "c2", 1) == "DequantizeLinear"
    assert reads(wts, "c1", 0) == "DequantizeLinear"

    def run(m):
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.concatenate([sess.run(None, {"input": x})[0] for x in xs])
    ref = run(fmodel)
    both = run(s.qdq_variant(q, fmodel, act_float=["c1", "c2"], w_float=["c1", "c2"]))
    assert np.abs(both - ref).max() < 1e-5 * np.abs(ref).max()   # nothing rounded is left
    assert np.abs(run(q) - ref).max() > 1e-3 * np.abs(ref).max()  # the INT8 graph itself is not float
