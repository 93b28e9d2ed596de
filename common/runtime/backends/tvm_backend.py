"""Upstream Apache TVM (apache-tvm from PyPI, an optional extra: requirements-tvm.txt) on the CPU.

Build:  tvm.relax.frontend.onnx.from_onnx(onnx, shape_dict={input: [N, C, H, W]}) -> Relax module,
        tvm.compile(mod, target="llvm") -> executable, export_library(engine .so)
Run:    tvm.runtime.load_module(engine) -> relax.VirtualMachine(lib, tvm.cpu()); vm["main"](input)
        -> the ONNX outputs in graph order; the VM's time_evaluator gives compute-only time.
IGIE is a TVM fork, so this is the nearest compiler to IGIE that runs anywhere: a graph whose import or
compilation fails here is reported as an IGIE portability warning, naming the operator where TVM says which.
Untuned (no MetaSchedule tuning): correct but slow; for checking numerics and portability, not for speed.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np

from common.engine_cache import cache_key
from common.errors import ConfigError, RuntimeFailure
from common.runtime.backends.base import Backend, BuildRequest, Capabilities, Runner
from common.runtime.backends.graph_io import extra_input_arrays, graph_io

TARGET = "llvm"
PRECISIONS = ("fp32",)
# the Relax ONNX frontend prints this line (then re-raises) when one node fails to convert
_CONVERT_ERROR = re.compile(r"Error converting operator (\w+)")


class PortabilityError(RuntimeFailure):
    """TVM cannot import or compile the graph; IGIE, a TVM fork, may fail on it too."""

    def __init__(self, stage: str, op: str | None, detail: str, path):
        self.stage, self.op, self.detail = stage, op, detail
        what = f"operator {op}" if op else "the graph"
        super().__init__(f"IGIE portability warning: upstream TVM cannot {stage} {what} ({detail})", path)

    def as_dict(self) -> dict:
        """The failure as a record stores it: compiler, stage, operator, detail."""
        return {"compiler": "apache-tvm", "stage": self.stage, "op": self.op, "detail": self.detail}


def _tvm_message(exc: Exception) -> str:
    """The last line of a TVM error (TVM puts its own backtrace first), operator reprs shortened."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # TVM spells an operator as its whole ir.Op(...) repr; its name is enough
    text = re.sub(r'Operator ir\.Op\(.*?name="([\w.]+)".*?support_level=\d+\)', r"\1", lines[-1] if lines else "")
    return f"{type(exc).__name__}: {text}"[:300]


class TvmRunner(Runner):
    def __init__(self, engine: Path, input_name: str, batch_size: int, io):
        import tvm
        from tvm import relax

        self.tvm, self.device = tvm, tvm.cpu(0)
        try:
            self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(engine)), self.device)
        except Exception as exc:  # TVMError and friends
            raise RuntimeFailure(f"TVM cannot load the engine ({_tvm_message(exc)})", engine) from None
        self.input_name, self.static_batch, self.output_names = input_name, batch_size, io.outputs
        self.input_order = list(io.inputs)  # Relax's main takes the graph inputs positionally, in graph order

    def _tensor(self, x: np.ndarray):
        return self.tvm.runtime.tensor(np.ascontiguousarray(x), self.device)

    def _args(self, feeds: dict) -> list:
        return [self._tensor(feeds[name]) for name in self.input_order]

    def _run(self, feeds: dict) -> list:
        out = self.vm["main"](*self._args(feeds))
        outs = [out] if hasattr(out, "numpy") else list(out)
        if len(outs) != len(self.output_names):
            raise RuntimeFailure(
                f"the TVM engine returned {len(outs)} outputs, the ONNX model has {len(self.output_names)}"
            )
        return [o.numpy() for o in outs]

    def sync(self):
        """Wait until the device has finished the queued work."""
        self.device.sync()

    device_timer = True

    def device_time(self, x: np.ndarray, number: int = 3, repeat: int = 3) -> list:
        """Per-run seconds of the compiled function alone (the VM's time_evaluator; input already on device)."""
        evaluator = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat)
        return list(evaluator(*self._args(self.feeds(self.pad(x)))).results)


class TvmBackend(Backend):
    name = "tvm"
    engine_suffix = ".so"
    capabilities = Capabilities(
        precisions=PRECISIONS, devices=("cpu",), dynamic_batch=False, device_timer=True, host_compute=True
    )

    @classmethod
    def availability(cls):
        """(usable here, why not): upstream apache-tvm with the Relax ONNX frontend."""
        try:
            import tvm
            from tvm.relax.frontend import onnx as _  # noqa: F401
        except ImportError as exc:
            return False, (
                f"upstream apache-tvm with the Relax ONNX frontend is not importable ({exc}); "
                "install it with: .venv/bin/python -m pip install -r requirements-tvm.txt"
            )
        if not hasattr(tvm, "compile"):
            return False, f"tvm {getattr(tvm, '__version__', '?')} has no tvm.compile (needs apache-tvm >= 0.20)"
        return True, ""

    def runtime_version(self) -> str:
        """apache-tvm-<version>: part of the engine key."""
        import tvm

        return f"apache-tvm-{tvm.__version__}"

    def build(self, req: BuildRequest):
        """(engine path, cache hit): the ONNX compiled by Relax for the CPU (FP32 only), cached by key; a
        PortabilityError names the stage and operator that failed."""
        self.device()
        if req.precision not in PRECISIONS:
            raise ConfigError(
                f"tvm backend: precision {req.precision} is not supported (fp32 only: it checks "
                "numerics and IGIE portability, not reduced precision)"
            )
        shape = [req.batch_size, *req.input_shape]
        shapes = {req.input_name: shape, **{name: [req.batch_size, len(v)] for name, v in req.extra_inputs}}
        key = cache_key(
            req.onnx_sha256,
            backend=self.name,
            precision=req.precision,
            input=req.input_name,
            shape=shape,
            extra_inputs=list(req.extra_inputs),
            runtime=self.runtime_version(),
            target=TARGET,
        )
        return req.cache.get_or_build(
            key,
            self.engine_suffix,
            lambda tmp: compile_onnx(req.onnx_path, shapes, tmp),
            {
                "backend": self.name,
                "precision": req.precision,
                "shape": shape,
                "onnx": str(req.onnx_path),
                "onnx_sha256": req.onnx_sha256,
                "runtime": self.runtime_version(),
                "target": TARGET,
            },
        )

    def load(self, engine: Path, req: BuildRequest) -> Runner:
        """A VM runner of the compiled engine."""
        io = graph_io(req.onnx_path)
        runner = TvmRunner(engine, req.input_name, req.batch_size, io)
        runner.extra_inputs = extra_input_arrays(io, req.input_name, req.extra_inputs, req.onnx_path)
        return runner


def unsupported_ops(model) -> list:
    """ONNX op types of the graph for which the Relax frontend has no converter at all."""
    try:
        from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map
    except ImportError:  # a private helper: without it, the import itself says what fails
        return []
    known = _get_convert_map()
    return sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx") and n.op_type not in known})


def compile_onnx(onnx_path: Path, shapes: dict, out: Path):
    """ONNX -> Relax -> llvm .so at `out`; PortabilityError naming the stage (and operator) that failed."""
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(onnx_path))
    missing = unsupported_ops(model)
    if missing:
        raise PortabilityError("import", missing[0], f"no converter for {', '.join(missing)}", onnx_path)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            mod = from_onnx(model, shape_dict=shapes, keep_params_in_input=False)
    except Exception as exc:  # the frontend raises TypeError/ValueError/TVMError/NotImplementedError...
        match = _CONVERT_ERROR.search(printed.getvalue())
        raise PortabilityError("import", match.group(1) if match else None, _tvm_message(exc), onnx_path) from None
    try:
        executable = tvm.compile(mod, target=TARGET)
    except Exception as exc:
        raise PortabilityError("compile", None, _tvm_message(exc), onnx_path) from None
    executable.export_library(str(out))


BACKEND = TvmBackend
