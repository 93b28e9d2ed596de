"""INT8 by structure: the network / post-processing split, Conv input statistics and the keep rule.

The post-processing of a detector graph (decode, score activation, TopK, NonMaxSuppression, gathers) is found from
the graph, not from names: the *network* is every weighted op (Conv, ConvTranspose, Gemm, MatMul with a constant
operand) and everything upstream of one; every other node computes on the network's raw head outputs (or on
shapes) and is post-processing. It is never quantised and never calibrated (its tensors after NMS have a
variable size, which the histogram calibrators cannot take).

The keep rule reads per-channel statistics of every Conv's activation input on calibration images. A target
whose activations get one scale per tensor (ONNX Runtime's QDQ, IGIE, TensorRT-class engines) rounds a channel
whose range is a small part of the tensor's to a few levels. In a regular Conv each output sums over all input
channels, so the large channels carry it; a depthwise Conv's output channel reads only its own input channel, so
a starved channel is a lost output channel. Such Convs stay in higher precision by rule, each with its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# ops that read only their input's shape: reading a network tensor does not make it a head output
_SHAPE_READERS = ("Shape", "Size")
RULE_VERSION = 2


# ---------------------------------------------------------------- network / post-processing split


@dataclass(frozen=True)
class Split:
    network: tuple  # node names of the network (weighted ops and everything upstream of one), graph order
    postprocess: tuple  # every other node, graph order
    head_outputs: tuple  # network tensors that post-processing (or the graph's outputs) reads


def _constant_names(graph) -> set:
    names = {t.name for t in graph.initializer}
    names |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return names


def split_network(model) -> Split:
    """The network and post-processing nodes of an ONNX graph, found from its structure alone."""
    g = model.graph
    consts = _constant_names(g)
    producer = {o: n for n in g.node for o in n.output}
    weighted = [n for n in g.node if n.op_type in WEIGHTED_OPS and any(i in consts for i in n.input[:2])]
    if not weighted:
        raise ValueError("the graph has no weighted op (Conv, Gemm, MatMul with constant weights): no network")
    network, stack = set(), [n.name or id(n) for n in weighted]
    by_key = {(n.name or id(n)): n for n in g.node}
    key = {id(n): (n.name or id(n)) for n in g.node}
    while stack:
        k = stack.pop()
        if k in network:
            continue
        network.add(k)
        for i in by_key[k].input:
            p = producer.get(i)
            if p is not None and key[id(p)] not in network:
                stack.append(key[id(p)])
    net_nodes = [n for n in g.node if key[id(n)] in network]
    post_nodes = [n for n in g.node if key[id(n)] not in network]
    net_out = {o for n in net_nodes for o in n.output}
    heads = []
    for n in post_nodes:
        if n.op_type in _SHAPE_READERS:
            continue
        heads += [i for i in n.input if i in net_out and i not in heads]
    heads += [o.name for o in g.output if o.name in net_out and o.name not in heads]
    return Split(tuple(n.name for n in net_nodes), tuple(n.name for n in post_nodes), tuple(heads))


def network_model(model, split: Split | None = None):
    """A copy of the graph holding only the network, its outputs the raw head tensors (what calibration runs)."""
    import onnx
    from onnx import helper

    split = split or split_network(model)
    keep = set(split.network)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = [n for n in m.graph.node if n.name in keep]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    inits = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    inputs = [i for i in m.graph.input if i.name in used]
    del m.graph.input[:]
    m.graph.input.extend(inputs)
    del m.graph.output[:]
    m.graph.output.extend([helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in split.head_outputs])
    return m


def float_inputs_for(model, nodes) -> list:
    """Rewire the named nodes of a QDQ graph to read the float tensors their QuantizeLinear / DequantizeLinear
    pairs were made from, and drop the pairs nothing reads any more; [(node, tensor)] rewired.

    A quantiser puts one pair on a tensor and every consumer reads its DequantizeLinear output, so a node it was
    told to leave float still reads rounded values when it shares its input with a quantised node (RTMDet-nano's
    kept `Conv_212` reads the tensor of the INT8 `Conv_209`). Left float has to mean float inputs."""
    g = model.graph
    consts = {t.name for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    wanted, rewired = set(nodes), []
    for n in g.node:
        if n.name not in wanted:
            continue
        for k, t in enumerate(n.input):
            dq = producer.get(t)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            qn = producer.get(dq.input[0])
            if qn is None or qn.op_type != "QuantizeLinear" or qn.input[0] in consts:
                continue
            n.input[k] = qn.input[0]
            rewired.append((n.name, qn.input[0]))
    if rewired:
        while True:  # a DequantizeLinear nobody reads, then its QuantizeLinear
            read = {i for n in g.node for i in n.input} | {o.name for o in g.output}
            qdq = ("QuantizeLinear", "DequantizeLinear")
            dead = [n for n in g.node if n.op_type in qdq and n.output[0] not in read]
            if not dead:
                break
            for n in dead:
                g.node.remove(n)
    return rewired


# ---------------------------------------------------------------- target capabilities


@dataclass(frozen=True)
class Target:
    """What an INT8 engine builder can run from a QDQ graph."""

    name: str
    per_channel_activations: bool  # one scale per activation channel (else one per tensor)
    per_channel_weights: bool  # one scale per output channel of a weight
    activation_types: tuple  # quantised activation element types it takes
    symmetric_activations: bool  # zero point 0 only
    note: str = ""
    # op types (the quantiser's names) whose inputs the recipe leaves float: merges of tensors whose ranges differ
    # (residual Add, Concat of branches), pooling and resizing, which INT8 does not speed up on the target
    float_ops: tuple = ()
    # the quantiser corrects the per-channel mean error rounding leaves (NNCF's fast bias correction): measured on
    # RTMDet-nano (docs/int8.md) to hold the depthwise Convs a plain per-tensor QDQ graph loses
    bias_correction: bool = False


TARGETS = {
    "onnxruntime": Target(
        "onnxruntime",
        False,
        True,
        ("quint8", "qint8"),
        False,
        "ONNX Runtime QDQ: one scale per activation tensor, per-channel weights",
    ),
    "igie": Target(
        "igie",
        False,
        True,
        ("quint8", "qint8"),
        False,
        "IGIE builds the ONNX Runtime QDQ graph (Iluvatar's recipes): per-tensor activations",
    ),
    "tensorrt": Target(
        "tensorrt",
        False,
        True,
        ("qint8",),
        True,
        "TensorRT-class: symmetric int8 per-tensor activations, per-channel weights",
    ),
    "openvino": Target(
        "openvino",
        False,
        True,
        ("quint8", "qint8"),
        False,
        "OpenVINO (NNCF on the OpenVINO model): per-tensor activations, per-channel weights",
        float_ops=("Add", "Concat", "MaxPool", "Interpolate"),
        bias_correction=True,
    ),
    # a runtime that takes one activation scale per channel (QDQ with an axis on activations): the structural
    # rule has nothing to keep, only the search refines
    "per_channel": Target(
        "per_channel",
        True,
        True,
        ("quint8", "qint8"),
        False,
        "per-channel activation scales (QuantizeLinear with an axis on activations)",
    ),
}


def target(name: str) -> Target:
    """The capabilities of a named INT8 target (KeyError when unknown: callers turn it into a ConfigError)."""
    return TARGETS[name]


def check_settings(tgt: Target, settings) -> list:
    """Why `settings` (common.runtime.quantize.Int8Settings) build a QDQ graph `tgt` cannot run ([] when it can)."""
    why = []
    if settings.per_channel and not tgt.per_channel_weights:
        why.append("per-channel weight scales (per_channel: true); the target takes one scale per weight")
    if settings.activation_type not in tgt.activation_types:
        why.append(f"activation_type {settings.activation_type}; the target takes {', '.join(tgt.activation_types)}")
    return why


def check_qdq_graph(model, tgt: Target) -> list:
    """Why the target cannot run this QDQ graph ([] when it can): per-channel activation scales on a per-tensor
    target, per-channel weight scales where it takes one per tensor, activation types or zero points it lacks."""
    from onnx import TensorProto, numpy_helper

    g = model.graph
    consts = {t.name: t for t in g.initializer}
    why = []
    for n in g.node:
        if n.op_type != "QuantizeLinear":
            continue
        weight = n.input[0] in consts
        scale = consts.get(n.input[1])
        size = int(np.prod(scale.dims)) if scale is not None else 1
        if size > 1:
            if weight and not tgt.per_channel_weights:
                why.append(f"{n.name or n.output[0]}: per-channel weight scales ({size})")
            if not weight and not tgt.per_channel_activations:
                why.append(f"{n.name or n.output[0]}: per-channel activation scales ({size}) on a per-tensor target")
        if not weight and len(n.input) > 2 and n.input[2] in consts:
            zp = consts[n.input[2]]
            kind = {TensorProto.UINT8: "quint8", TensorProto.INT8: "qint8"}.get(zp.data_type, str(zp.data_type))
            if kind not in tgt.activation_types:
                why.append(
                    f"{n.name or n.output[0]}: {kind} activations (the target takes {', '.join(tgt.activation_types)})"
                )
            elif tgt.symmetric_activations and np.any(numpy_helper.to_array(zp) != 0):
                why.append(f"{n.name or n.output[0]}: a non-zero activation zero point on a symmetric target")
    return why


# ---------------------------------------------------------------- Conv input statistics


@dataclass
class ConvInput:
    """Per-channel statistics of one Conv's activation input over the calibration images."""

    node: str
    tensor: str
    group: int
    channels: int
    cmin: np.ndarray = field(repr=False)
    cmax: np.ndarray = field(repr=False)
    csq: np.ndarray = field(repr=False)  # sum of squares per channel
    count: int = 0  # values per channel summed
    out_ms: np.ndarray | None = field(default=None, repr=False)  # the Conv output's mean square per output channel
    wsq: np.ndarray | None = field(default=None, repr=False)  # sum of squared weights per output channel
    csum: np.ndarray | None = field(default=None, repr=False)  # sum per input channel (its mean: bias correction)

    @property
    def depthwise(self) -> bool:
        """A depthwise Conv: as many groups as input channels, each channel filtered on its own."""
        return self.group > 1 and self.group == self.channels

    def ranges(self) -> np.ndarray:
        """Each input channel's max - min over the calibration images."""
        return self.cmax - self.cmin

    def spread(self) -> float:
        """Widest channel range over the narrowest (non-constant) one: how far one tensor scale has to stretch."""
        r = self.ranges()
        live = r[r > 0]
        return float(live.max() / live.min()) if live.size else 1.0

    def step(self, symmetric: bool = False) -> float:
        """The per-tensor 8-bit step the tensor's range gives."""
        lo, hi = min(float(self.cmin.min()), 0.0), max(float(self.cmax.max()), 0.0)
        return 2 * max(-lo, hi) / 254 if symmetric else (hi - lo) / 255

    def channel_sqnr_db(self, symmetric: bool = False) -> np.ndarray:
        """Per channel: its mean square over the per-tensor rounding noise (step^2 / 12), in dB."""
        noise = self.step(symmetric) ** 2 / 12
        ms = self.csq / max(self.count, 1)
        with np.errstate(divide="ignore"):
            return 10 * np.log10(np.maximum(ms, 1e-30) / max(noise, 1e-30))

    def tensor_sqnr_db(self, symmetric: bool = False) -> float:
        """The whole tensor's mean square over the per-tensor rounding noise, in dB."""
        noise = self.step(symmetric) ** 2 / 12
        return float(
            10 * np.log10(max(float(self.csq.sum()) / max(self.count * self.channels, 1), 1e-30) / max(noise, 1e-30))
        )

    def output_sqnr_db(self, symmetric: bool = False) -> np.ndarray:
        """Per output channel: its mean square over the noise the input's per-tensor rounding puts into it
        (step^2 / 12 times the channel's sum of squared weights), in dB."""
        if self.out_ms is None or self.wsq is None:
            raise ValueError(f"{self.node}: no Conv output statistics (out_ms, wsq) to weigh the rounding noise by")
        noise = self.step(symmetric) ** 2 / 12 * np.maximum(self.wsq, 1e-30)
        return 10 * np.log10(np.maximum(self.out_ms, 1e-30) / np.maximum(noise, 1e-30))

    def as_dict(self, symmetric: bool = False) -> dict:
        """This Conv input's statistics as the structure report lists them (dB to 0.1)."""
        sq = self.channel_sqnr_db(symmetric)
        return {
            "node": self.node,
            "tensor": self.tensor,
            "group": self.group,
            "channels": self.channels,
            "depthwise": self.depthwise,
            "spread": round(self.spread(), 1),
            "tensor_sqnr_db": round(self.tensor_sqnr_db(symmetric), 1),
            "worst_channel_sqnr_db": round(float(sq.min()), 1),
            "median_channel_sqnr_db": round(float(np.median(sq)), 1),
            "output_sqnr_p5_db": round(float(np.percentile(self.output_sqnr_db(symmetric), 5)), 1),
        }


def conv_inputs(model) -> list:
    """(node, activation tensor, group, input channels, output tensor, per-output-channel sum of squared weights) of
    every Conv with a constant weight, graph order."""
    from onnx import numpy_helper

    consts = {t.name: t for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in consts:
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        w = numpy_helper.to_array(consts[n.input[1]]).astype(np.float64)
        out.append(
            (
                n.name,
                n.input[0],
                int(group),
                int(w.shape[1]) * int(group),
                n.output[0],
                (w.reshape(w.shape[0], -1) ** 2).sum(1),
            )
        )
    return out


def conv_input_stats(model, batches, input_name: str, extra_inputs: dict | None = None) -> list:
    """ConvInput statistics of every Conv of the network over the calibration batches (one image each), on the
    float network alone (post-processing cut off)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    net = network_model(model)
    convs = conv_inputs(net)
    tensors = sorted({c[1] for c in convs} | {c[4] for c in convs})
    have = {o.name for o in net.graph.output}
    net.graph.output.extend(
        [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors if t not in have]
    )
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(net.SerializeToString(), so, providers=["CPUExecutionProvider"])
    acc: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray]] = {}
    inputs = {i.name for i in sess.get_inputs()}
    for x in batches:
        feeds = {
            input_name: x,
            **{k: np.asarray(v, np.float32)[None] for k, v in (extra_inputs or {}).items() if k in inputs},
        }
        for name, v in zip(tensors, sess.run(tensors, feeds)):
            v = np.moveaxis(np.asarray(v, np.float64), 1, 0).reshape(v.shape[1], -1)
            a = acc.get(name)
            stats = (v.min(1), v.max(1), (v * v).sum(1), v.shape[1], v.sum(1))
            acc[name] = (
                stats
                if a is None
                else (
                    np.minimum(a[0], stats[0]),
                    np.maximum(a[1], stats[1]),
                    a[2] + stats[2],
                    a[3] + stats[3],
                    a[4] + stats[4],
                )
            )
    if not acc:
        raise ValueError("no calibration image to take Conv input statistics from")
    return [
        ConvInput(node, t, g, c, *acc[t][:4], out_ms=acc[o][2] / acc[o][3], wsq=wsq, csum=acc[t][4])
        for node, t, g, c, o, wsq in convs
    ]


# ---------------------------------------------------------------- weight bias correction


def rounded_weights(w: np.ndarray, weight_type: str, per_channel: bool) -> np.ndarray:
    """The weights as ONNX Runtime's quantiser rounds them: qint8 symmetric in [-127, 127] (zero point 0), quint8
    asymmetric in [0, 255] with the range widened to hold 0; one scale per output channel or per tensor."""
    flat = w.reshape(len(w), -1) if per_channel else w.reshape(1, -1)
    if weight_type == "qint8":
        scale = np.abs(flat).max(1) / 127.0
        scale = np.where(scale > 0, scale, 1.0)[:, None]
        q = np.clip(np.round(flat / scale), -127, 127) * scale
    else:
        lo, hi = np.minimum(flat.min(1), 0.0), np.maximum(flat.max(1), 0.0)
        scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0)[:, None]
        zp = np.round(-lo[:, None] / scale)
        q = (np.clip(np.round(flat / scale) + zp, 0, 255) - zp) * scale
    return q.reshape(w.shape)


def correct_biases(model, stats: list, nodes, weight_type: str, per_channel: bool) -> list:
    """Fold the mean shift that rounding the weights puts into each output channel back into the bias of the
    named Convs (in place): b -= sum over the kernel of (W_rounded - W) times the mean of the input channel it
    reads, the means from the calibration statistics. Each output channel's rounding errors do not average out
    over its fan-in when its input channels have non-zero means (after SiLU / ReLU they all do), so every INT8
    layer shifts its outputs by a fixed amount that the following layers carry to the heads; NNCF's bias
    correction (the openvino target) removes the same shift. Returns [(node, largest |shift| / output RMS)]."""
    from onnx import numpy_helper

    by_node = {s.node: s for s in stats}
    consts = {t.name: t for t in model.graph.initializer}
    done = []
    for n in model.graph.node:
        s = by_node.get(n.name)
        if n.op_type != "Conv" or n.name not in nodes or s is None or s.csum is None or n.input[1] not in consts:
            continue
        w = numpy_helper.to_array(consts[n.input[1]]).astype(np.float64)
        mean = s.csum / max(s.count, 1)
        groups, per_group = s.group, w.shape[1]
        err = (rounded_weights(w, weight_type, per_channel) - w).reshape(w.shape[0], per_group, -1).sum(2)
        means = mean.reshape(groups, per_group)[np.arange(w.shape[0]) // (w.shape[0] // groups)]
        shift = (err * means).sum(1)
        if len(n.input) > 2 and n.input[2] in consts:
            bias_t = consts[n.input[2]]
            bias = numpy_helper.to_array(bias_t).astype(np.float64)
        else:  # a Conv without a bias gets one to hold the correction
            name = f"{n.name}__bias_correction"
            bias_t = numpy_helper.from_array(np.zeros(w.shape[0], np.float32), name)
            model.graph.initializer.append(bias_t)
            bias_t = model.graph.initializer[-1]
            bias = np.zeros(w.shape[0])
            while len(n.input) < 3:
                n.input.append("")
            n.input[2] = name
        bias_t.CopyFrom(numpy_helper.from_array((bias - shift).astype(np.float32), bias_t.name))
        rms = np.sqrt(np.maximum(s.out_ms, 1e-30)) if s.out_ms is not None else np.ones_like(shift)
        done.append((n.name, float(np.max(np.abs(shift) / rms))))
    return done


# ---------------------------------------------------------------- the keep rule


@dataclass(frozen=True)
class Rule:
    """Keep a Conv in higher precision when its output channels read one input channel each (depthwise) and the
    per-tensor activation scale starves a channel: its mean square over the rounding noise of the tensor's one
    8-bit step (step^2 / 12) is below `min_channel_sqnr_db` (25 dB: about 4 bits of that channel left). Any Conv
    is kept when the noise that rounding puts into its output channels (through their weights) leaves the 5th
    percentile output channel below `min_output_sqnr_db`."""

    min_channel_sqnr_db: float = 25.0
    min_output_sqnr_db: float = 24.0


def keep_by_rule(stats: list, tgt: Target, rule: Rule = Rule()) -> list:
    """[(node, reason)] of the Convs the target's activation scale granularity cannot hold, graph order."""
    if tgt.per_channel_activations:
        return []
    kept = []
    for s in stats:
        sym = tgt.symmetric_activations
        out_db = float(np.percentile(s.output_sqnr_db(sym), 5)) if s.out_ms is not None else math.inf
        if not s.depthwise:
            if out_db < rule.min_output_sqnr_db:
                kept.append(
                    (
                        s.node,
                        f"output channels at {out_db:.1f} dB (5th percentile) from one input scale, "
                        f"input range spread {s.spread():.0f}x",
                    )
                )
            continue
        if tgt.bias_correction:
            continue
        sq = s.channel_sqnr_db(sym)
        worst = float(sq.min())
        if worst < rule.min_channel_sqnr_db:
            kept.append(
                (
                    s.node,
                    f"depthwise, input range spread {s.spread():.0f}x, {int((sq < rule.min_channel_sqnr_db).sum())}"
                    f"/{s.channels} channels under {rule.min_channel_sqnr_db:.0f} dB with one scale "
                    f"(worst {worst:.1f} dB)",
                )
            )
    return kept
