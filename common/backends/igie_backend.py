"""IGIE (Iluvatar's TVM fork) for MR-V100: ONNX -> relay -> engine .so -> graph executor.

Build:  tvm.relay.import_model.import_model_to_igie(onnx, {input: shape}, backend="igie")
        tvm.relay.build(mod, target=tvm.target.iluvatar(model="MR", options=...), params=..., precision=...)
        lib.export_library(engine)
Run:    tvm.runtime.load_module(engine); tvm.contrib.graph_executor.GraphModule(lib["default"](device));
        set_input / run / get_output; device.sync() before any clock is read.
INT8:   relay.quantize.quantize(mod, params, dataset=[{input: tvm.nd.array(batch)}, ...]) on calibration images
        (common/calibration.py) under relay.quantize.qconfig(...), before relay.build(precision="int8").
Engines are compiled for one batch size; the harness pads the last partial batch (Runner.static_batch).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..engine_cache import cache_key
from ..errors import ConfigError, RuntimeFailure
from .base import Backend, BuildRequest, Capabilities, Runner
from .graph_io import extra_input_arrays, graph_io

TARGET_MODEL = "MR"
TARGET_OPTIONS = "-libs=cudnn,cublas,ixinfer"
PRECISIONS = ("fp32", "fp16", "int8")
# INT8 follows Iluvatar's public IGIE recipes (their quantization utility): relay.quantize.quantize under a
# qconfig with data-aware "percentile" calibration and max weight scales, inside PassContext(opt_level=3), then
# relay.build(..., precision="int8"). Read from those recipes, not checked against an installed SDK.
CALIBRATE_MODE = "percentile"
WEIGHT_SCALE = "max"


class IgieRunner(Runner):
    def __init__(self, tvm, engine: Path, device, input_name: str, batch_size: int, output_names: list):
        from tvm.contrib import graph_executor
        self.tvm, self.device = tvm, device
        try:
            lib = tvm.runtime.load_module(str(engine))
            self.module = graph_executor.GraphModule(lib["default"](device))
        except Exception as exc:  # TVM raises TVMError subclasses
            raise RuntimeFailure(f"IGIE cannot load the engine ({str(exc).splitlines()[0]})", engine) from None
        self.input_name, self.static_batch = input_name, batch_size
        n = self.module.get_num_outputs()
        if n != len(output_names):
            raise RuntimeFailure(f"the engine has {n} outputs, the ONNX model {len(output_names)}", engine)
        self.output_names = output_names

    def _run(self, feeds: dict) -> list:
        for name, value in feeds.items():
            self.module.set_input(name, self.tvm.nd.array(np.ascontiguousarray(value), self.device))
        self.module.run()
        return [self.module.get_output(i).numpy() for i in range(len(self.output_names))]

    def sync(self):
        self.device.sync()

    def device_time(self, x: np.ndarray, number: int = 10, repeat: int = 5) -> list:
        """Per-run seconds measured on the device by the runtime's own time_evaluator (compute only: the input
        is set once, before)."""
        self.module.set_input(self.input_name, self.tvm.nd.array(np.ascontiguousarray(self.pad(x)), self.device))
        evaluator = self.module.module.time_evaluator("run", self.device, number=number, repeat=repeat)
        return list(evaluator().results)


class IgieBackend(Backend):
    name = "igie"
    engine_suffix = ".so"
    capabilities = Capabilities(precisions=PRECISIONS, devices=("mr-v100",), dynamic_batch=False,
                                device_timer=True, telemetry=(("mr-v100", "ixsmi"),), host_compute=False)

    @classmethod
    def availability(cls):
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
        return f"igie-tvm-{getattr(self._tvm(), '__version__', 'unknown')}"

    def target(self):
        return self._tvm().target.iluvatar(model=TARGET_MODEL, options=TARGET_OPTIONS)

    def build(self, req: BuildRequest):
        if req.precision not in PRECISIONS:
            raise ConfigError(f"igie backend: precision {req.precision} is not supported ({', '.join(PRECISIONS)})")
        calib = req.options.get("calibration")
        if req.precision == "int8" and calib is None:
            raise ConfigError("igie int8 needs calibration images: pass --calib-dir DIR (images that are not the "
                              "evaluation set)")
        shape = [req.batch_size, *req.input_shape]
        calib_key = calib.sha256 if req.precision == "int8" else None
        shapes = {req.input_name: shape, **{name: [req.batch_size, len(v)] for name, v in req.extra_inputs}}
        key = cache_key(req.onnx_sha256, backend=self.name, precision=req.precision, input=req.input_name,
                        shape=shape, extra_inputs=list(req.extra_inputs), runtime=self.runtime_version(),
                        target=[TARGET_MODEL, TARGET_OPTIONS],
                        **({"calibration": [calib_key, CALIBRATE_MODE, WEIGHT_SCALE]} if calib_key else {}))

        def compile_to(tmp: Path):
            tvm = self._tvm()
            mod, params = tvm.relay.import_model.import_model_to_igie(str(req.onnx_path), shapes,
                                                                       backend="igie")
            if req.precision == "int8":
                mod = self._quantize(tvm, mod, params, calib, req)
            lib = tvm.relay.build(mod, target=self.target(), params=params, precision=req.precision)
            lib.export_library(str(tmp))

        describe = {"backend": self.name, "precision": req.precision, "shape": shape, "onnx": str(req.onnx_path),
                    "onnx_sha256": req.onnx_sha256, "runtime": self.runtime_version()}
        if calib_key:
            describe["calibration"] = calib.describe()
        return req.cache.get_or_build(key, self.engine_suffix, compile_to, describe)

    @staticmethod
    def _quantize(tvm, mod, params, calib, req: BuildRequest):
        import tvm.relay.quantize  # noqa: F401
        dataset = [{req.input_name: tvm.nd.array(b)} for b in calib.batches(req.batch_size)]
        with tvm.transform.PassContext(opt_level=3):
            with tvm.relay.quantize.qconfig(calibrate_mode=CALIBRATE_MODE, weight_scale=WEIGHT_SCALE):
                return tvm.relay.quantize.quantize(mod, params, dataset=dataset)

    def load(self, engine: Path, req: BuildRequest) -> Runner:
        tvm = self._tvm()
        device = tvm.device(self.target().kind.name, 0)
        io = graph_io(req.onnx_path)
        runner = IgieRunner(tvm, engine, device, req.input_name, req.batch_size, io.outputs)
        runner.extra_inputs = extra_input_arrays(io, req.input_name, req.extra_inputs, req.onnx_path)
        return runner
