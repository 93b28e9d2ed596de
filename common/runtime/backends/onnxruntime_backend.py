"""ONNX Runtime: the embedded default backend (CPU; CUDA / TensorRT execution providers where present).

FP16 here is a float16 graph: weights and activations stored in float16 with the graph's inputs and outputs kept
float32, and the ops that must stay in float32 (NMS, TopK, ... plus a model's own block list) left in float32.
The CPU provider has no float16 kernel for many ops (Conv among them) and computes them in FP32 between casts,
so its FP16 outputs can hide an overflow a device shows: common/compare/fp16_range.py judges the graph itself. A
conversion that yields no float16 tensor is refused rather than run as FP32.
"""

from __future__ import annotations

import threading
from pathlib import Path

from common.errors import BackendUnavailable, ConfigError, InputError, RuntimeFailure
from common.runtime.backends.base import Backend, BuildRequest, Capabilities, Runner
from common.runtime.backends.graph_io import extra_input_arrays, graph_io


class _Background:
    """fn(*args) in a thread: result() joins it and returns its value or raises its exception."""

    def __init__(self, fn, *args):
        self._out: tuple = (None, None)

        def run():
            try:
                self._out = (fn(*args), None)
            except BaseException as exc:  # noqa: BLE001 - raised again by result() in the caller's thread
                self._out = (None, exc)

        self._thread = threading.Thread(target=run, name=f"ort-load-{fn.__name__}", daemon=True)
        self._thread.start()

    def join(self):
        self._thread.join()

    def result(self):
        self.join()
        value, exc = self._out
        if exc is not None:
            raise exc
        return value


_DEVICE_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
# Ops whose float16 versions are missing on some providers or lose what they compute (index/score logic).
FP16_ALWAYS_FP32 = ["NonMaxSuppression", "TopK", "RoiAlign", "Range", "CumSum"]
FP16_CONVERTER = 5  # the version of convert_fp16's graph: change it when its output changes (engine cache keys)


def convert_fp16(model_path: Path, out_path: Path, block_list=(), block_nodes=()):
    """Write model_path's float16 conversion to out_path (input and output types kept), the ops of
    block_list and the nodes of block_nodes left in FP32; an InputError naming the model when it cannot be loaded."""
    import onnx
    from onnxruntime.transformers import float16

    try:
        model = onnx.load(str(model_path))
    except Exception as exc:  # onnx raises DecodeError / ValueError / OSError variants
        raise InputError(f"cannot load ONNX model ({type(exc).__name__}: {exc})", model_path) from None
    ops = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_ALWAYS_FP32) | set(block_list))
    nodes = sorted(set(block_nodes) | _constants_of_blocked_nodes(model.graph, set(ops), set(block_nodes)))
    converted = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=ops, node_block_list=nodes, disable_shape_infer=False
    )
    _tidy_block_casts(converted.graph)
    n16 = sum(1 for t in converted.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    if n16 == 0:
        raise RuntimeFailure("FP16 conversion produced no float16 weights: refusing to run FP32 as FP16", model_path)
    onnx.save(converted, str(out_path))


def _constants_of_blocked_nodes(graph, ops: set, names: set) -> set:
    """Constant nodes read only by nodes kept in FP32: the converter would store their values in float16 anyway
    (RT-DETR's inverse-sigmoid eps, 1e-5, is a float16 subnormal: 0 on a device that flushes them) and cast them
    back for their FP32 readers. Kept FP32 with their readers, they hold the value the FP32 graph computes with."""
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return {
        node.name
        for node in graph.node
        if node.op_type == "Constant"
        and node.name
        and node.output
        and readers.get(node.output[0])
        and all(r.op_type in ops or r.name in names for r in readers[node.output[0]])
    }


def _tidy_block_casts(graph):
    """Repair two habits of onnxruntime's float16 converter around blocked (FP32) nodes.

    It casts every blocked node's output to float16 and back to float32 for each blocked reader, so a value
    that only fits FP32 (|x| > 65504) overflows between two blocked nodes: such round trips become an Identity
    of the FP32 value. And it gives the cast in front of each blocked reader a name made from the tensor's
    name, so two blocked readers of one tensor (two Resizes sharing one `scales` constant, two NMS-side ops
    reading one score tensor) produce two identical nodes, an invalid graph: keep one.
    """
    from onnx import TensorProto, helper

    seen, nodes = set(), []
    for node in graph.node:
        key = (node.name, tuple(node.input), tuple(node.output)) if node.op_type == "Cast" else None
        if key is not None and key in seen:
            continue
        seen.add(key)
        nodes.append(node)
    producer = {out: n for n in nodes for out in n.output}

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    # only the casts the converter inserted: after a blocked node / graph input, before a blocked node / output
    def to16(n) -> bool:
        return cast_to(n) == TensorProto.FLOAT16 and (
            n.name.endswith("_cast_to_fp16_node") or n.name.startswith("graph_input_cast")
        )

    for i, node in enumerate(nodes):
        if not (
            cast_to(node) == TensorProto.FLOAT
            and (node.name.endswith("_cast_to_fp32_node") or node.name.startswith("graph_output_cast"))
        ):
            continue
        first = producer.get(node.input[0])
        if first is not None and to16(first):
            nodes[i] = helper.make_node("Identity", [first.input[0]], list(node.output), name=node.name)
    used = {name for n in nodes for name in n.input} | {o.name for o in graph.output}
    nodes = [n for n in nodes if not (to16(n) and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(_topological(nodes, {i.name for i in graph.input} | {t.name for t in graph.initializer}))


def _topological(nodes: list, available: set) -> list:
    """The converter appends its casts at the end; ONNX wants producers before readers. Stable: the original
    order wherever it is already valid. Nodes that read names from nowhere (subgraph scopes) keep their place."""
    available = set(available) | {""}
    produced = {o for n in nodes for o in n.output}
    ready = lambda n: all(i in available or i not in produced for i in n.input)  # noqa: E731
    pending, ordered = list(nodes), []
    while pending:
        rest = []
        for n in pending:
            if ready(n):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle cannot happen in a valid graph: keep the rest as it was
            ordered += rest
            break
        pending = rest
    return ordered


class OrtRunner(Runner):
    concurrent = True  # InferenceSession.run is thread-safe: streams share one session's weights and set-up

    def __init__(self, session, input_name: str):
        self.session = session
        names = [i.name for i in session.get_inputs()]
        if input_name not in names:
            raise InputError(f"the model has no input '{input_name}' (it has: {', '.join(names)})")
        self.input_name = input_name
        inp = next(i for i in session.get_inputs() if i.name == input_name)
        self.input_type = inp.type
        self.static_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.output_names = [o.name for o in session.get_outputs()]

    def _run(self, feeds: dict) -> list:
        return self.session.run(self.output_names, feeds)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    engine_suffix = ".onnx"
    capabilities = Capabilities(
        precisions=("fp32", "fp16", "int8"),
        devices=tuple(_DEVICE_PROVIDERS),
        dynamic_batch=True,
        device_timer=False,
        host_compute=True,
        reference=True,
        fp16_onnx=True,
        telemetry=(("cuda", "nvidia-smi"), ("tensorrt", "nvidia-smi")),
    )

    def precision_note(self, precision: str) -> str:
        """What FP16 means on this provider, said in the run's output (docs/fidelity.md)."""
        if precision != "fp16":
            return ""
        if self.device() == "cpu":
            return (
                "float16 storage of weights and activations; onnxruntime's CPU provider computes many ops in FP32 "
                "between casts, so the CPU hides overflow a device shows: the FP16 range check judges every "
                "float16 tensor from the FP32 values"
            )
        return (
            f"a float16 graph (weights and activations) run by the {self.device()} provider; the FP16 range check "
            "judges every float16 tensor from the FP32 values"
        )

    @classmethod
    def availability(cls):
        """(usable here, why not): whether onnxruntime imports."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return False, f"onnxruntime is not importable ({exc})"
        return True, ""

    def providers(self) -> list:
        import onnxruntime as ort

        wanted = _DEVICE_PROVIDERS[self.device()]
        if wanted[0] not in ort.get_available_providers():
            raise BackendUnavailable(
                f"onnxruntime has no {wanted[0]} here (available: {', '.join(ort.get_available_providers())})"
            )
        return wanted

    def runtime_version(self) -> str:
        """onnxruntime-<version>: part of the engine key."""
        import onnxruntime as ort

        return f"onnxruntime-{ort.__version__}"

    def build(self, req: BuildRequest):
        """(engine path, cache hit): FP32 is the ONNX itself; FP16 its float16 conversion (the spec's
        block lists), INT8 its static quantisation, both cached by key."""
        if req.precision == "fp32":
            return req.onnx_path, True
        if req.precision == "int8":
            from common.runtime.quantize import build_int8

            return build_int8(self.name, self.runtime_version(), req, ".onnx", lambda q, tmp: q.replace(tmp))
        if req.precision != "fp16":
            raise ConfigError(f"onnxruntime backend supports fp32, fp16 and int8, not {req.precision}")
        from common.engine_cache import cache_key

        block_ops = tuple(req.options.get("fp16_block_ops", ()))
        block_nodes = tuple(req.options.get("fp16_block_nodes", ()))
        key = cache_key(
            req.onnx_sha256,
            backend=self.name,
            precision=req.precision,
            runtime=self.runtime_version(),
            block_ops=block_ops,
            block_nodes=block_nodes,
            converter=FP16_CONVERTER,
        )
        return req.cache.get_or_build(
            key,
            self.engine_suffix,
            lambda tmp: convert_fp16(req.onnx_path, tmp, block_ops, block_nodes),
            {
                "backend": self.name,
                "precision": req.precision,
                "onnx": str(req.onnx_path),
                "onnx_sha256": req.onnx_sha256,
                "runtime": self.runtime_version(),
            },
        )

    def load(self, engine: Path, req: BuildRequest) -> Runner:
        """An InferenceSession runner of the engine on the device's execution providers."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        threads = int(self.options.get("threads") or 0)
        if threads:
            so.intra_op_num_threads = threads
        providers = self.providers()
        # Building the session (~0.2 s) releases the GIL, so the graph's inputs (importing onnx and parsing the
        # model, ~0.1 s) are read meanwhile in a thread; its errors come after the session's, as before.
        graph = _Background(graph_io, req.onnx_path)
        try:
            session = ort.InferenceSession(str(engine), so, providers=providers)
        except (
            ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
            ort.capi.onnxruntime_pybind11_state.NoSuchFile,
        ) as exc:
            raise InputError(f"not a loadable ONNX model ({str(exc).splitlines()[0]})", engine) from None
        except Exception as exc:  # noqa: BLE001 - Fail, InvalidArgument, InvalidGraph... for a damaged model
            raise InputError(
                f"onnxruntime cannot load it ({(str(exc).strip() or type(exc).__name__).splitlines()[0]})", engine
            ) from None
        finally:
            graph.join()  # on every path: no thread outlives load()
        runner = OrtRunner(session, req.input_name)
        runner.extra_inputs = extra_input_arrays(graph.result(), req.input_name, req.extra_inputs, req.onnx_path)
        if runner.input_type != "tensor(float)":
            raise InputError(f"input '{req.input_name}' is {runner.input_type}; the suite feeds float32", engine)
        # a fixed C/H/W that differs from the spec would only fail at the first batch, with a runtime message
        shape = next(i.shape for i in session.get_inputs() if i.name == req.input_name)
        fixed = [(s, w) for s, w in zip(shape[1:], req.input_shape) if isinstance(s, int)]
        if len(shape) != 4 or any(s != w for s, w in fixed):
            raise InputError(
                f"input '{req.input_name}' has shape {shape}; the spec feeds "
                f"[N, {', '.join(map(str, req.input_shape))}]",
                engine,
            )
        return runner


BACKEND = OnnxRuntimeBackend
