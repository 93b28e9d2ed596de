"""IGIE (Iluvatar's TVM fork) for MR-V100: ONNX -> relay -> engine .so -> graph executor.

Build:  tvm.relay.import_model.import_model_to_igie(onnx, {input: shape}, backend="igie")
        tvm.relay.build(mod, target=tvm.target.iluvatar(model="MR", options=...), params=..., precision=...)
        lib.export_library(engine)
Run:    tvm.runtime.load_module(engine); tvm.contrib.graph_executor.GraphModule(lib["default"](device));
        set_input / run / get_output; device.sync() before any clock is read.
INT8:   as Iluvatar's public recipes do it: the ONNX is quantised with ONNX Runtime's static quantisation on
        calibration images at batch 1 (common/runtime/quantize.py, never evaluation images), and that quantised ONNX
        goes through the same import and relay.build(..., precision="int8"); relay.quantize is not used.
Engines are compiled for one batch size; the harness pads the last partial batch (Runner.static_batch). Every
output's shape is checked against the ONNX's, outputs are fetched through .numpy() or (older SDKs) .asnumpy(),
the library is exported under a temporary name that still ends in .so (export_library picks the format by the
suffix), and the engine runs on device $SUITE_GPU_INDEX, the one telemetry samples.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import numpy as np

from common import load_file_module
from common.engine_cache import cache_key
from common.errors import ConfigError, InputError, RuntimeFailure
from common.runtime.backends.base import Backend, BuildRequest, Capabilities, Runner
from common.runtime.backends.graph_io import extra_input_arrays, graph_io

TARGET_MODEL = "MR"
TARGET_OPTIONS = "-libs=cudnn,cublas,ixinfer"
PRECISIONS = ("fp32", "fp16", "int8")


def _symbolic_shape_inference():
    """ONNX Runtime's SymbolicShapeInference, loaded from its own file: the package around it
    (onnxruntime/tools/__init__.py) imports torch whenever torch is installed, as on an MR-V100 node with the
    vendor's torch (1.3 s of start-up, where the module itself needs only onnx, numpy and sympy)."""
    import importlib.util
    import sys

    name = "onnxruntime.tools.symbolic_shape_infer"
    if name in sys.modules:
        return sys.modules[name].SymbolicShapeInference
    ort = importlib.util.find_spec("onnxruntime")
    path = Path(ort.origin).parent / "tools" / "symbolic_shape_infer.py" if ort and ort.origin else None
    if path is None or not path.is_file():  # another layout: the package's own import, torch and all
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference
    return load_file_module("_suite_symbolic_shape_infer", path).SymbolicShapeInference


def _outputs(onnx_path: Path, input_shapes: dict | None = None) -> list:
    """[(name, shape)] of the ONNX's outputs for the engine's fixed input shapes: a shape lists an int for a dim
    known from the graph (ONNX Runtime's symbolic shape inference, as the exported files often declare every dim
    symbolic) and a symbol name otherwise; one symbol stands for one size across all outputs."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # onnx raises several decode error types
        raise InputError(f"cannot load ONNX model ({type(exc).__name__})", onnx_path) from None
    declared = model.graph.output
    if input_shapes:
        try:
            SymbolicShapeInference = _symbolic_shape_inference()
            for i in model.graph.input:
                if i.name in input_shapes:
                    dims = i.type.tensor_type.shape.dim
                    for d, v in zip(dims, input_shapes[i.name]):
                        d.ClearField("dim_param")
                        d.dim_value = int(v)
            declared = SymbolicShapeInference.infer_shapes(model, auto_merge=True).graph.output
        except Exception:  # noqa: BLE001 - an op the inference does not know: the declared shapes are checked
            pass
    outs = []
    for o in declared:
        tt = o.type.tensor_type
        dims = tt.shape.dim if tt.HasField("shape") else None
        outs.append(
            (
                o.name,
                None
                if dims is None
                else [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or f"?{o.name}{k}")
                    for k, d in enumerate(dims)
                ],
            )
        )
    return outs


def _outputs_remembered(req: BuildRequest, shapes: dict) -> list:
    """_outputs, kept in the engine cache by the ONNX's content and the input shapes: ONNX Runtime's symbolic shape
    inference (sympy and the graph walk, ~0.9 s of a run's start-up) gives the same answer for one file every time."""
    outputs, _ = req.cache.remembered(
        "igie-outputs", cache_key(req.onnx_sha256, shapes=shapes), lambda: _outputs(req.onnx_path, shapes)
    )
    try:
        return [(name, shape) for name, shape in cast(list, outputs)]
    except (ValueError, TypeError):  # an entry of another shape: not this cache's answer
        return _outputs(req.onnx_path, shapes)


def _to_numpy(array) -> np.ndarray:
    """An NDArray as numpy: .numpy() on current TVM / IGIE, .asnumpy() on older releases."""
    fetch = getattr(array, "numpy", None) or getattr(array, "asnumpy", None)
    if fetch is None:
        raise RuntimeFailure(f"IGIE output of type {type(array).__name__} has neither numpy() nor asnumpy()")
    return np.asarray(fetch())


class IgieRunner(Runner):
    device_index = 0  # the card it runs on (SUITE_GPU_INDEX), set by the backend's load()

    def __init__(self, tvm, engine: Path, device, input_name: str, batch_size: int, outputs: list):
        from tvm.contrib import graph_executor

        self.tvm, self.device = tvm, device
        try:
            lib = tvm.runtime.load_module(str(engine))
            self.module = graph_executor.GraphModule(lib["default"](device))
        except Exception as exc:  # TVM raises TVMError subclasses
            raise RuntimeFailure(f"IGIE cannot load the engine ({str(exc).splitlines()[0]})", engine) from None
        self.input_name, self.static_batch = input_name, batch_size
        n = self.module.get_num_outputs()
        if n != len(outputs):
            raise RuntimeFailure(f"the engine has {n} outputs, the ONNX model {len(outputs)}", engine)
        self.engine = engine
        self.output_names = [name for name, _ in outputs]
        self.output_shapes = [shape for _, shape in outputs]

    def _check_shapes(self, outs: list):
        """An output whose shape is not the ONNX's (rank, known dims, one size per symbolic dim across outputs)
        is an engine that computes something else: refused rather than decoded into wrong detections."""
        sizes: dict[str, int] = {}
        for i, (value, want) in enumerate(zip(outs, self.output_shapes)):
            if want is None:
                continue
            bad = value.ndim != len(want)
            for w, g in zip(want, value.shape):
                if isinstance(w, int):
                    bad = bad or w != g
                else:
                    bad = bad or sizes.setdefault(w, g) != g
            if bad:
                shown = ", ".join(str(w) if isinstance(w, int) else "?" for w in want)
                raise RuntimeFailure(
                    f"IGIE output {i} '{self.output_names[i]}' has shape {list(value.shape)}, the "
                    f"ONNX model gives [{shown}]"
                    + ("" if all(isinstance(w, int) for w in want) else " (a '?' is one size across all outputs)"),
                    self.engine,
                )

    def _run(self, feeds: dict) -> list:
        for name, value in feeds.items():
            self.module.set_input(name, self.tvm.nd.array(np.ascontiguousarray(value), self.device))
        self.module.run()
        outs = [_to_numpy(self.module.get_output(i)) for i in range(len(self.output_names))]
        self._check_shapes(outs)
        return outs

    def sync(self):
        """Wait until the device has finished the queued work."""
        self.device.sync()

    device_timer = True

    def device_time(self, x: np.ndarray, number: int = 10, repeat: int = 5) -> list:
        """Per-run seconds measured on the device by the runtime's own time_evaluator (compute only: the input
        is set once, before)."""
        self.module.set_input(self.input_name, self.tvm.nd.array(np.ascontiguousarray(self.pad(x)), self.device))
        evaluator = self.module.module.time_evaluator("run", self.device, number=number, repeat=repeat)
        return list(evaluator().results)


class IgieBackend(Backend):
    name = "igie"
    engine_suffix = ".so"
    capabilities = Capabilities(
        precisions=PRECISIONS,
        devices=("mr-v100",),
        dynamic_batch=False,
        device_timer=True,
        telemetry=(("mr-v100", "ixsmi"),),
        host_compute=False,
    )

    @classmethod
    def availability(cls):
        """(usable here, why not): IGIE's tvm, the one with tvm.target.iluvatar."""
        try:
            import tvm
        except ImportError:
            return False, "the IGIE SDK is not installed here (no importable 'tvm' package)"
        if not hasattr(tvm, "target") or not hasattr(tvm.target, "iluvatar"):
            return False, f"'tvm' {getattr(tvm, '__version__', '?')} is not IGIE: it has no tvm.target.iluvatar"
        try:
            import tvm.relay.import_model  # noqa: F401
        except ImportError:
            return False, "'tvm' has no relay.import_model (IGIE's ONNX importer)"
        return True, ""

    def _tvm(self):
        import tvm
        import tvm.relay.import_model  # noqa: F401

        return tvm

    def runtime_version(self) -> str:
        """igie-tvm-<version>: part of the engine key."""
        return f"igie-tvm-{getattr(self._tvm(), '__version__', 'unknown')}"

    def target(self):
        """IGIE's Iluvatar target with the suite's model and options."""
        return self._tvm().target.iluvatar(model=TARGET_MODEL, options=TARGET_OPTIONS)

    def build(self, req: BuildRequest):
        """(engine path, cache hit): the ONNX imported by IGIE and relay.build for the Iluvatar target (INT8
        from the quantised ONNX), exported as a shared library and cached by key."""
        if req.precision not in PRECISIONS:
            raise ConfigError(f"igie backend: precision {req.precision} is not supported ({', '.join(PRECISIONS)})")
        shape = [req.batch_size, *req.input_shape]
        shapes = {req.input_name: shape, **{name: [req.batch_size, len(v)] for name, v in req.extra_inputs}}
        build_parts = dict(
            input=req.input_name,
            shape=shape,
            extra_inputs=list(req.extra_inputs),
            target=[TARGET_MODEL, TARGET_OPTIONS],
        )

        def compile_to(onnx_path: Path, tmp: Path):
            tvm = self._tvm()
            mod, params = tvm.relay.import_model.import_model_to_igie(str(onnx_path), shapes, backend="igie")
            lib = tvm.relay.build(mod, target=self.target(), params=params, precision=req.precision)
            # export_library chooses how to link by the file name's suffix: the temporary name must end in .so
            so = tmp.with_name(tmp.name + ".so")
            try:
                lib.export_library(str(so))
                os.replace(so, tmp)
            finally:
                if so.exists():
                    so.unlink()

        if req.precision == "int8":
            from common.runtime.quantize import build_int8

            return build_int8(
                self.name,
                self.runtime_version(),
                req,
                self.engine_suffix,
                compile_to,
                key_extra=build_parts,
                describe_extra={"shape": shape},
            )
        key = cache_key(
            req.onnx_sha256, backend=self.name, precision=req.precision, runtime=self.runtime_version(), **build_parts
        )
        describe = {
            "backend": self.name,
            "precision": req.precision,
            "shape": shape,
            "onnx": str(req.onnx_path),
            "onnx_sha256": req.onnx_sha256,
            "runtime": self.runtime_version(),
        }
        return req.cache.get_or_build(key, self.engine_suffix, lambda tmp: compile_to(req.onnx_path, tmp), describe)

    def load(self, engine: Path, req: BuildRequest) -> Runner:
        """A runner of the engine on device $SUITE_GPU_INDEX (the one the telemetry samples)."""
        tvm = self._tvm()
        # the device telemetry samples ($SUITE_GPU_INDEX, common/runtime/telemetry.py) is the one the engine runs on
        index = int(os.environ.get("SUITE_GPU_INDEX", "0") or 0)
        device = tvm.device(self.target().kind.name, index)
        shapes = {
            req.input_name: [req.batch_size, *req.input_shape],
            **{name: [req.batch_size, len(v)] for name, v in req.extra_inputs},
        }
        runner = IgieRunner(tvm, engine, device, req.input_name, req.batch_size, _outputs_remembered(req, shapes))
        runner.device_index = index
        runner.extra_inputs = extra_input_arrays(
            graph_io(req.onnx_path), req.input_name, req.extra_inputs, req.onnx_path
        )
        return runner


BACKEND = IgieBackend
