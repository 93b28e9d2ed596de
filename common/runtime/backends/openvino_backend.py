"""OpenVINO on the CPU (the `openvino` package, an optional layer: requirements-openvino.txt).

Build:  openvino.convert_model(onnx) -> reshape to the static batch -> (INT8: NNCF post-training quantisation of
        the OpenVINO model on calibration images, the post-processing and the rule's kept Convs in its ignored
        scope) -> compile_model("CPU", inference precision f32) -> export_model(): one cached engine blob.
Run:    Core.import_model(blob, "CPU") -> an infer request; static batch (the last batch padded).

FP32 runs with INFERENCE_PRECISION_HINT f32: the CPU plugin's default on CPUs with bfloat16 units is bf16, which is
not FP32. INT8 keeps f32 for what it leaves unquantised.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np

from common.engine_cache import cache_key
from common.errors import ConfigError, InputError, RuntimeFailure
from common.runtime.backends.base import Backend, BuildRequest, Capabilities, Runner
from common.runtime.backends.graph_io import extra_input_arrays, graph_io

PRECISIONS = ("fp32", "int8")
DEVICE = "CPU"
RECIPE = 1  # change when the engine a build writes changes (cache keys)


def _config(threads: int) -> dict:
    cfg = {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = str(threads)
    return cfg


class OpenVinoRunner(Runner):
    def __init__(self, compiled, input_name: str, batch_size: int, io):
        self.compiled, self.request = compiled, compiled.create_infer_request()
        self.input_name, self.static_batch, self.output_names = input_name, batch_size, io.outputs
        names = {n for o in compiled.outputs for n in o.get_names()}
        missing = [n for n in self.output_names if n not in names]
        if missing:
            raise RuntimeFailure(
                f"the OpenVINO engine has no output {missing[0]!r} (it has: {', '.join(sorted(names))})"
            )

    def _run(self, feeds: dict) -> list:
        self.request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return [np.array(self.request.get_tensor(name).data) for name in self.output_names]


class OpenVinoBackend(Backend):
    name = "openvino"
    engine_suffix = ".ovblob"
    capabilities = Capabilities(
        precisions=PRECISIONS, devices=("cpu",), dynamic_batch=False, device_timer=False, host_compute=True
    )

    @classmethod
    def availability(cls):
        """(usable here, why not): whether openvino imports, with the install command when not."""
        try:
            import openvino  # noqa: F401
        except ImportError as exc:
            return False, (
                f"openvino is not importable ({exc}); install it with: "
                ".venv/bin/python -m pip install -r requirements-openvino.txt"
            )
        return True, ""

    def runtime_version(self) -> str:
        """openvino-<version>: part of the engine key."""
        import openvino

        return f"openvino-{openvino.__version__.split('-')[0]}"

    def _threads(self) -> int:
        return int(self.options.get("threads") or 0)

    def build(self, req: BuildRequest):
        """(engine path, cache hit): the ONNX compiled by OpenVINO (INT8: quantised on the calibration
        images first) and exported, cached by key."""
        self.device()
        if req.precision not in PRECISIONS:
            raise ConfigError(f"openvino backend: precision {req.precision} is not supported ({', '.join(PRECISIONS)})")
        shape = [req.batch_size, *req.input_shape]
        extra = {}
        describe: dict[str, object] = {
            "backend": self.name,
            "precision": req.precision,
            "shape": shape,
            "onnx": str(req.onnx_path),
            "onnx_sha256": req.onnx_sha256,
            "runtime": self.runtime_version(),
        }
        if req.precision == "int8":
            from common.runtime.quantize import Int8Settings, resolve_target

            calib = req.options.get("calibration")
            if calib is None:
                raise ConfigError(
                    "openvino int8 needs calibration images: pass --calib-dir DIR (images that are "
                    "not the evaluation set)"
                )
            settings = req.options.get("int8") or Int8Settings()
            resolve_target(settings, self.name, req.onnx_path)
            extra = {"calibration": calib.sha256, "int8": settings.key(), "quantizer": _nncf_version()}
            describe.update({"calibration": calib.describe(), "int8": settings.key()})
        key = cache_key(
            req.onnx_sha256,
            backend=self.name,
            precision=req.precision,
            input=req.input_name,
            shape=shape,
            extra_inputs=list(req.extra_inputs),
            runtime=self.runtime_version(),
            recipe=RECIPE,
            **extra,
        )
        return req.cache.get_or_build(key, self.engine_suffix, lambda tmp: self._compile(req, shape, tmp), describe)

    def _compile(self, req: BuildRequest, shape: list, out: Path):
        import openvino as ov

        try:
            model = ov.convert_model(str(req.onnx_path))
        except Exception as exc:  # noqa: BLE001 - the frontend raises OpConversionFailure and friends
            raise RuntimeFailure(f"OpenVINO cannot convert the model ({_first_line(exc)})", req.onnx_path) from None
        extra_shapes = {name: [1, len(v)] for name, v in req.extra_inputs}
        if req.precision == "int8":
            model = self._quantised(model, req, extra_shapes)
        model.reshape({req.input_name: shape, **{k: [shape[0], v[1]] for k, v in extra_shapes.items()}})
        try:
            compiled = ov.Core().compile_model(model, DEVICE, _config(self._threads()))
            blob = compiled.export_model()
        except Exception as exc:  # noqa: BLE001
            raise RuntimeFailure(f"OpenVINO cannot compile the model ({_first_line(exc)})", req.onnx_path) from None
        out.write_bytes(blob.getvalue() if isinstance(blob, io.BytesIO) else bytes(blob))

    def _quantised(self, model, req: BuildRequest, extra_shapes: dict):
        """The NNCF-quantised model at batch 1, remembered as OpenVINO IR (<cache>/openvino-int8/) by everything
        but the batch: engines of other batch sizes reshape it instead of calibrating again."""
        import hashlib
        import json
        import shutil
        import tempfile

        import openvino as ov

        settings = req.options["int8"]
        key = hashlib.sha256(
            json.dumps(
                {
                    "onnx": req.onnx_sha256,
                    "calibration": req.options["calibration"].sha256,
                    "int8": settings.key(),
                    "quantizer": _nncf_version(),
                    "runtime": self.runtime_version(),
                    "input": req.input_name,
                    "shape": list(req.input_shape),
                    "recipe": RECIPE,
                },
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()[:32]
        folder = Path(req.cache.root) / "openvino-int8"
        xml = folder / f"{key}.xml"
        if xml.is_file() and xml.with_suffix(".bin").is_file():
            try:
                return ov.Core().read_model(str(xml))
            except Exception:  # noqa: BLE001 - a damaged entry is quantised again
                pass
        model.reshape({req.input_name: [1, *req.input_shape], **extra_shapes})
        model = quantize_openvino(model, req)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="ovq.", dir=folder) as tmp:
                ov.save_model(model, str(Path(tmp) / "m.xml"), compress_to_fp16=False)
                shutil.move(str(Path(tmp) / "m.bin"), str(xml.with_suffix(".bin")))  # the weights first:
                shutil.move(str(Path(tmp) / "m.xml"), str(xml))  # the xml marks it complete
        except OSError:
            pass  # a cache that cannot be written only costs the calibration
        return model

    def load(self, engine: Path, req: BuildRequest) -> Runner:
        """A runner of the exported engine; an InputError naming it when OpenVINO cannot import it."""
        import openvino as ov

        try:
            compiled = ov.Core().import_model(io.BytesIO(Path(engine).read_bytes()), DEVICE, _config(self._threads()))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"OpenVINO cannot load the engine ({_first_line(exc)})", engine) from None
        graph = graph_io(req.onnx_path)
        runner = OpenVinoRunner(compiled, req.input_name, req.batch_size, graph)
        runner.extra_inputs = extra_input_arrays(graph, req.input_name, req.extra_inputs, req.onnx_path)
        return runner


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip() or '?').splitlines()[0][:300]}"


def _nncf_version() -> str:
    import nncf

    return f"nncf-{nncf.__version__}"


def ignored_scope(onnx_path: Path, req: BuildRequest, settings) -> tuple[list, list]:
    """(OpenVINO op name patterns NNCF leaves alone, [(node, reason)] the rule kept): the post-processing found
    from the ONNX graph and the Convs the openvino target's scale granularity cannot hold. OpenVINO names the
    ops it converts from an ONNX node after the node (`Conv_9`, `Conv_9/WithoutBiases`)."""
    import onnx

    from common.runtime.int8_structure import TARGETS, keep_by_rule, split_network
    from common.runtime.quantize import conv_stats_cached

    model = onnx.load(str(onnx_path))
    split = split_network(model)
    kept = []
    if settings.rule:
        calib = req.options["calibration"]
        stats = conv_stats_cached(
            onnx_path, req.onnx_sha256, calib, req.input_name, dict(req.extra_inputs), req.cache.root
        )
        kept = keep_by_rule(stats, TARGETS[settings.target or "openvino"])
    names = list(split.postprocess) + [n for n, _ in kept] + list(settings.keep_fp32)
    return [f"^{re.escape(n)}(/.*)?$" for n in names if n], kept


def quantize_openvino(model, req: BuildRequest):
    """NNCF post-training quantisation of an OpenVINO model (batch 1) on the request's calibration images."""
    import logging

    import nncf

    from common.runtime.quantize import Int8Settings

    settings = req.options.get("int8") or Int8Settings()
    from common.runtime.int8_structure import TARGETS

    patterns, _ = ignored_scope(req.onnx_path, req, settings)
    types = list(TARGETS[settings.target or "openvino"].float_ops)
    calib = req.options["calibration"]
    batches = list(calib.batches(1))
    extra = {k: np.asarray(v, np.float32)[None] for k, v in req.extra_inputs}
    dataset = nncf.Dataset(batches, lambda x: {req.input_name: x, **extra})
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars; stdout is build_engine's --json
            return nncf.quantize(
                model,
                dataset,
                subset_size=len(batches),
                target_device=nncf.TargetDevice.CPU,
                ignored_scope=nncf.IgnoredScope(patterns=patterns, types=types, validate=False),
            )
    except Exception as exc:  # noqa: BLE001 - NNCF raises assorted exception types
        raise RuntimeFailure(f"NNCF quantisation failed ({_first_line(exc)})", req.onnx_path) from None
    finally:
        nncf_log.setLevel(level)


def int8_convs(runner: OpenVinoRunner) -> tuple[int, int]:
    """(Convolutions the CPU plugin runs in INT8, all Convolutions) of a loaded engine, from its runtime model."""
    n = total = 0
    for op in runner.compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) == "Convolution":
            total += 1
            n += rt["runtimePrecision"].astype(str).lower() in ("i8", "u8")
    return n, total


BACKEND = OpenVinoBackend
