"""From an engine request (common/harness/requests.py) to a loaded engine: which ONNX (given, exported from a
checkpoint, or the spec's), the build request, the backend's engine (built or from the cache) and its runner. Shared
by the run drivers (runs.py), the fidelity comparisons and scripts/build_engine.py."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import REPO_ROOT
from common.config.specs import Variant
from common.engine_cache import EngineCache, file_sha256_memo
from common.errors import ConfigError, InputError, RuntimeFailure
from common.harness.requests import EngineRequest
from common.runtime.backends import backend_class, get_backend
from common.runtime.backends.base import Backend, BuildRequest, Runner


@dataclass
class Prepared:
    variant: Variant
    onnx_path: Path
    onnx_sha256: str
    backend: Backend
    request: BuildRequest
    engine: Path
    cache_hit: bool
    runner: Runner
    asked: EngineRequest  # what it was prepared from


def resolve_onnx(req: EngineRequest, variant: Variant) -> Path:
    """The ONNX to run: --onnx (or $ONNX_MODEL, read with the flags), else one exported (once, cached) from
    --checkpoint [+ --config], else the spec's."""
    value = req.onnx
    if not value and req.checkpoint:
        from common.export.pipeline import DEFAULT_OPSET, export_cached

        return export_cached(
            variant,
            req.checkpoint,
            req.config,
            Path(req.cache_dir) / "exports",
            req.opset or variant.export_opset or DEFAULT_OPSET,
        )
    value = value or variant.onnx
    if not value:
        raise ConfigError(
            f"no ONNX model for {variant.id}: pass --onnx or set ONNX_MODEL, or --checkpoint [--config] to export one"
        )
    path = Path(os.path.expandvars(value))
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    if not path.is_file():
        raise InputError("ONNX model not found", path)
    return path


def build_request(req: EngineRequest, variant: Variant, onnx_path: Path, onnx_sha256: str) -> BuildRequest:
    """What an engine is built from (scripts/build_engine.py builds the same request as a run)."""
    options = variant.build_options
    if backend_class(req.backend).spec_section is not None:  # the backend's own section of the spec
        options[req.backend] = variant.backend_section(req.backend)
    options["preprocess_key"] = variant.preprocess.key(variant.height, variant.width)
    if req.precision == "int8":  # only INT8 calibrates; $CALIB_DIR must not affect others
        from common.runtime.quantize import settings_for

        options["int8"] = settings_for(variant, req.calib_images)
        if req.calib_dir:
            from common.data.calibration import CalibrationSet

            options["calibration"] = CalibrationSet.for_variant(
                req.calib_dir, variant, options["int8"].calib_images, req.dataset
            )
    return BuildRequest(
        onnx_path=onnx_path,
        onnx_sha256=onnx_sha256,
        precision=req.precision,
        batch_size=req.batch_size,
        input_name=variant.input_name,
        input_shape=(3, variant.height, variant.width),
        cache=EngineCache(req.cache_dir),
        options=options,
        extra_inputs=tuple(variant.extra_inputs.items()),
    )


def sha256_memo_dir(cache_dir: str | None) -> Path | None:
    """Where the models' sha256 are remembered (engine_cache.file_sha256_memo): beside the engines."""
    return Path(cache_dir) / "sha256" if cache_dir else None


def prepare(
    req: EngineRequest, variant: Variant, onnx_sha256: str | None = None, onnx_path: Path | None = None
) -> Prepared:
    """Backend, engine (built or taken from the cache) and a loaded runner for `variant`."""
    if req.batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {req.batch_size}")
    onnx_path = onnx_path or resolve_onnx(req, variant)
    backend = get_backend(req.backend, req.device, threads=req.runtime_threads, **req.backend_options)
    digest = onnx_sha256 or file_sha256_memo(onnx_path, sha256_memo_dir(req.cache_dir))
    build = build_request(req, variant, onnx_path, digest)
    engine, hit = backend.build(build)
    runner = backend.load(engine, build)
    if runner.static_batch is not None and req.batch_size > runner.static_batch:  # say it in the user's terms
        raise ConfigError(
            f"batch of {req.batch_size} for an engine built for batch {runner.static_batch} "
            f"(--bs {req.batch_size}); rebuild or re-export the model for batch {req.batch_size}, "
            f"or use --bs {runner.static_batch}",
            onnx_path,
        )
    return Prepared(variant, onnx_path, digest, backend, build, engine, hit, runner, req)


def infer(runner: Runner, x: np.ndarray, image_ids=None) -> dict:
    """runner.infer(), a runtime's own exception turned into a RuntimeFailure (its exit code) naming its first
    line."""
    try:
        return runner.infer(x, image_ids=image_ids)
    except Exception as exc:  # the runtimes raise their own exception types
        if isinstance(exc, (InputError, RuntimeFailure)):
            raise
        raise RuntimeFailure(f"inference failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
