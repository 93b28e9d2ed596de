"""INT8 by structure on small synthetic graphs: the post-processing split found from the graph, the keep rule read
from Conv input statistics, and the target capability checks of a QDQ graph."""
import numpy as np
import pytest


def _detector(depthwise_spread: float = 300.0):
    """input -> Conv (stem) -> Mul (per-channel gains: input range spread) -> depthwise Conv -> Relu -> Conv (head)
    -> Sigmoid -> ReduceMax -> TopK -> Gather, with a Shape of the input feeding the decode: a detector in miniature
    whose post-processing starts after the head Conv."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    c = 8
    gains = np.geomspace(1.0, depthwise_spread, c).astype(np.float32).reshape(1, c, 1, 1)
    inits = [numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32) * 0.3, "w_stem"),
             numpy_helper.from_array(gains, "gains"),
             numpy_helper.from_array(rng.standard_normal((c, 1, 3, 3)).astype(np.float32) * 0.3, "w_dw"),
             numpy_helper.from_array(rng.standard_normal((4, c, 1, 1)).astype(np.float32) * 0.3, "w_head"),
             numpy_helper.from_array(np.array([5], np.int64), "k"),
             numpy_helper.from_array(np.array([2], np.int64), "axes"),
             numpy_helper.from_array(np.array(0, np.int64), "zero")]
    nodes = [helper.make_node("Conv", ["input", "w_stem"], ["stem"], name="stem", pads=[1] * 4),
             helper.make_node("Mul", ["stem", "gains"], ["scaled"], name="gain"),
             helper.make_node("Conv", ["scaled", "w_dw"], ["dw"], name="dw", pads=[1] * 4, group=c),
             helper.make_node("Relu", ["dw"], ["act"], name="act"),
             helper.make_node("Conv", ["act", "w_head"], ["head"], name="head"),
             helper.make_node("Shape", ["input"], ["ishape"], name="ishape"),
             helper.make_node("Gather", ["ishape", "zero"], ["n"], name="batch_n"),
             helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="n1"),
             helper.make_node("Concat", ["n1", "four", "minus1"], ["flat_shape"], name="flat_shape", axis=0),
             helper.make_node("Reshape", ["head", "flat_shape"], ["flat"], name="flatten"),
             helper.make_node("Sigmoid", ["flat"], ["scores"], name="score_act"),
             helper.make_node("ReduceMax", ["scores"], ["best"], name="best", keepdims=0, axes=[1]),
             helper.make_node("TopK", ["best", "k"], ["top", "idx"], name="topk"),
             ]
    inits += [numpy_helper.from_array(np.array([0], np.int64), "axes0"),
              numpy_helper.from_array(np.array([4], np.int64), "four"),
              numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                          ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("top", TensorProto.FLOAT, ["N", 5]),
                               helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _batches(n=4):
    rng = np.random.default_rng(1)
    return [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(n)]


def test_postprocess_is_found_from_the_graph():
    from common.runtime.int8_structure import network_model, split_network
    model = _detector()
    split = split_network(model)
    assert set(split.network) == {"stem", "gain", "dw", "act", "head"}
    assert set(split.postprocess) == {"flatten", "score_act", "best", "topk", "ishape", "batch_n", "n1",
                                      "flat_shape"}
    assert split.head_outputs == ("head",)   # the Shape of the input reads no network tensor
    import onnxruntime as ort
    net = network_model(model, split)
    sess = ort.InferenceSession(net.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["head"]
    assert sess.run(None, {"input": _batches(1)[0]})[0].shape == (1, 4, 16, 16)


def test_a_graph_without_weights_has_no_network():
    from onnx import TensorProto, helper

    from common.runtime.int8_structure import split_network
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ValueError, match="no weighted op"):
        split_network(helper.make_model(g))


def test_rule_keeps_a_depthwise_conv_whose_input_channels_spread():
    """Channel gains 300x apart in front of a depthwise Conv: its small channels round to a few levels under one
    scale, so the rule keeps it, saying why; the same Conv with even gains, or on a per-channel target, is left
    to INT8."""
    from common.runtime.int8_structure import conv_input_stats, keep_by_rule, target
    stats = {s.node: s for s in conv_input_stats(_detector(300.0), _batches(), "input")}
    assert stats["dw"].depthwise and not stats["stem"].depthwise and not stats["head"].depthwise
    assert stats["dw"].spread() > 100
    kept = dict(keep_by_rule(list(stats.values()), target("onnxruntime")))
    assert "dw" in kept and kept["dw"].startswith("depthwise, input range spread")
    assert "stem" not in kept
    assert keep_by_rule(list(stats.values()), target("per_channel")) == []
    even = conv_input_stats(_detector(1.0), _batches(), "input")
    assert "dw" not in dict(keep_by_rule(even, target("onnxruntime")))


def test_target_refuses_a_qdq_graph_it_cannot_run(tmp_path):
    """A per-channel activation scale on a per-tensor target, a uint8 activation or a non-zero zero point on a
    symmetric int8 target: refused with the node named."""
    from onnx import TensorProto, helper, numpy_helper

    from common.runtime.int8_structure import check_qdq_graph, target

    def qdq(scale, zp):
        inits = [numpy_helper.from_array(np.asarray(scale, np.float32), "s"), numpy_helper.from_array(zp, "z")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q_x", axis=1),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq_x", axis=1)]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])

    per_tensor_u8 = qdq(0.1, np.array(128, np.uint8))
    assert check_qdq_graph(per_tensor_u8, target("onnxruntime")) == []
    assert any("uint8" in w or "quint8" in w for w in check_qdq_graph(per_tensor_u8, target("tensorrt")))
    assert any("zero point" in w for w in check_qdq_graph(qdq(0.1, np.array(3, np.int8)), target("tensorrt")))
    assert check_qdq_graph(qdq(0.1, np.array(0, np.int8)), target("tensorrt")) == []
    per_channel = qdq([0.1, 0.2], np.array([0, 0], np.int8))
    why = check_qdq_graph(per_channel, target("igie"))
    assert why and "q_x: per-channel activation scales" in why[0]
    assert check_qdq_graph(per_channel, target("per_channel")) == []


def test_int8_section_names_the_target(tmp_path):
    from common.errors import ConfigError
    from common.runtime.quantize import Int8Settings, read_int8_section, resolve_target
    assert read_int8_section({"target": "tensorrt", "rule": False}).target == "tensorrt"
    with pytest.raises(ConfigError, match="int8.target: 'tpu' is not one of"):
        read_int8_section({"target": "tpu"}, tmp_path / "model.yaml")
    # settings the target cannot run are refused before a build
    with pytest.raises(ConfigError, match="tensorrt cannot run.*activation_type quint8"):
        resolve_target(Int8Settings(target="tensorrt"), "onnxruntime")
    assert resolve_target(Int8Settings(), "igie").name == "igie"
    assert resolve_target(Int8Settings(target="tensorrt", activation_type="qint8"), "igie").name == "tensorrt"


def test_a_node_left_float_reads_float_where_it_shares_a_tensor_with_an_int8_node(tmp_path):
    """One tensor read by two Convs, one kept in FP32 (as RTMDet-nano's Conv_212 shares Conv_209's input): ONNX
    Runtime's quantiser gives both the DequantizeLinear output; the kept Conv must read the float tensor, the
    other stays INT8, and nothing dangles."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from common.runtime.quantize import Int8Settings, int8_convs, quantize_onnx
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w_a"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w_b"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w_c")]
    nodes = [helper.make_node("Conv", ["input", "w_a"], ["t"], name="a", pads=[1] * 4),
             helper.make_node("Conv", ["t", "w_b"], ["ob"], name="b"),
             helper.make_node("Conv", ["t", "w_c"], ["oc"], name="c"),
             helper.make_node("Add", ["ob", "oc"], ["out"], name="sum")]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    src = tmp_path / "shared.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(src))

    class Calib:
        sha256 = "synthetic"

        @staticmethod
        def batches(n):
            return iter(_batches(4)[:1] * 4)

    settings = Int8Settings(rule=False, keep_fp32=("c",), calib_images=4)
    info = quantize_onnx(src, tmp_path / "q.onnx", Calib, settings, "input", tmp_path / "cache")
    q = onnx.load(str(tmp_path / "q.onnx"))
    by_name = {n.name: n for n in q.graph.node}
    producer = {o: n for n in q.graph.node for o in n.output}
    assert by_name["c"].input[0] == "t" and by_name["c"].input[1] == "w_c"
    assert producer[by_name["b"].input[0]].op_type == "DequantizeLinear"
    assert info["int8_convs"] == int8_convs(q) == 2   # a and b
    read = {i for n in q.graph.node for i in n.input} | {o.name for o in q.graph.output}
    assert all(o in read for n in q.graph.node for o in n.output)


def _outlier_net(tmp_path):
    """input -> Conv -> Relu -> Conv (weights with one large value per output channel, so rounding them is coarse)
    -> output: the second Conv reads non-negative inputs with non-zero means."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(3)
    w2 = rng.standard_normal((6, 8, 3, 3)).astype(np.float32) * 0.05
    w2[:, 0, 1, 1] = 3.0   # the per-channel scale follows the outlier: the small weights round to a few levels
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.full(8, 0.5, np.float32), "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.zeros(6, np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["out"], name="c2", pads=[1] * 4)]
    graph = helper.make_graph(nodes, "outlier", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "outlier.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def test_bias_correction_folds_the_weight_rounding_shift_back(tmp_path):
    """int8.bias_correction: the rounded weights it reasons about are ONNX Runtime's own (equal to the
    DequantizeLinear weights of the QDQ graph), and the INT8 graph's per-channel output mean over the calibration
    images moves much closer to the float graph's than without it."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from common.runtime.int8_structure import rounded_weights
    from common.runtime.quantize import Int8Settings, quantize_onnx
    src = _outlier_net(tmp_path)
    batches = _batches(8)

    class Calib:
        sha256 = "outlier"

        @staticmethod
        def batches(n):
            return iter(batches)

    def mean_error(path):
        def means(p):
            sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
            return np.mean([sess.run(None, {"input": x})[0].mean(axis=(0, 2, 3)) for x in batches], axis=0)
        return float(np.abs(means(path) - means(src)).sum())

    errors = {}
    for bc in (False, True):
        q = tmp_path / f"q_{bc}.onnx"
        settings = Int8Settings(rule=False, calib_images=8, bias_correction=bc)
        info = quantize_onnx(src, q, Calib, settings, "input", tmp_path / "cache")
        assert info["bias_corrected"] == (2 if bc else 0)
        errors[bc] = mean_error(q)
    qm = onnx.load(str(tmp_path / "q_True.onnx"))
    init = {t.name: numpy_helper.to_array(t) for t in qm.graph.initializer}
    producer = {o: n for n in qm.graph.node for o in n.output}
    dq = producer[next(n for n in qm.graph.node if n.name == "c2").input[1]]
    ort_w = init[dq.input[0]].astype(np.float64) * init[dq.input[1]].reshape(-1, 1, 1, 1)
    src_w = numpy_helper.to_array(onnx.load(str(src)).graph.initializer[2]).astype(np.float64)
    assert np.allclose(rounded_weights(src_w, "qint8", True), ort_w, rtol=0, atol=1e-7)
    assert errors[True] < 0.25 * errors[False], errors
