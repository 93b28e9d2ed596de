#!/usr/bin/env python3
"""Build (or find in the cache) the engine of one model for one backend, precision, batch and input shape.

    scripts/build_engine.py --model rtmdet [--variant V] --backend igie --precision fp16 --bs 32
    scripts/build_engine.py --onnx model.onnx --input-shape 3x640x640 --backend tvm --precision fp32 --bs 1
    scripts/build_engine.py --model rtmdet --backend igie --precision int8 --calib-dir calib/ --bs 8

Prints the engine path and whether it came from the cache (`cache: hit` / `cache: miss`); `--json` prints one
JSON object instead. The run commands (scripts/suite) build through the same code and the same cache, so an
engine built here is the one they load. Exit codes as the suite's: 2 bad input, 3 the build failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import ixuca_suite  # noqa: E402,F401  the one bootstrap: sys.path, the repo's .venv (scripts/ixuca_suite.py)

from common.runtime.backends import get_backend  # noqa: E402
from common.runtime.backends.base import BuildRequest  # noqa: E402
from common.engine_cache import EngineCache, file_sha256  # noqa: E402
from common.cli import exit_now, guarded  # noqa: E402
from common.errors import ConfigError, InputError, RuntimeFailure, SuiteError  # noqa: E402
from common.config.options import add_groups, config_from_args  # noqa: E402
from common.harness.engine import build_request, resolve_onnx  # noqa: E402
from common.harness.requests import engine_request  # noqa: E402
from common.config.specs import load_model  # noqa: E402


def _shape(text: str) -> tuple:
    parts = text.lower().replace(",", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CxHxW or HxW, got {text!r}") from None
    if len(dims) == 2:
        dims = (3, *dims)
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"expected CxHxW or HxW with positive sizes, got {text!r}")
    return dims


def parse_args(argv=None):
    from common.config.parser import SuiteParser  # no prefix matching, did-you-mean, --version
    p = SuiteParser(prog="build_engine.py", description=__doc__.split("\n\n")[0])
    add_groups(p, "model", "engine", "dataset", required=())
    own = p.add_argument_group("build options")
    own.add_argument("--input-shape", type=_shape, help="CxHxW (or HxW) of one image (default: the spec's)")
    own.add_argument("--input-name", help="input tensor name (default: the spec's, else the ONNX's first input)")
    own.add_argument("--json", action="store_true", help="print one JSON object")
    own.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return p.parse_args(argv)


def _onnx_input(onnx_path: Path) -> tuple[str, tuple | None]:
    """The first real input of an ONNX graph and its fixed C, H, W (None where any is dynamic)."""
    import onnx
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # onnx raises several decode error types
        raise InputError(f"cannot load ONNX model ({type(exc).__name__})", onnx_path) from None
    inits = {i.name for i in model.graph.initializer}
    inp = next((i for i in model.graph.input if i.name not in inits), None)
    if inp is None:
        raise InputError("the ONNX graph has no input", onnx_path)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    return inp.name, tuple(dims[1:]) if len(dims) == 4 and None not in dims[1:] else None


def build(args) -> dict:
    cfg = config_from_args(args)
    backend = get_backend(cfg.backend, cfg.device)
    if cfg.model:
        variant = load_model(cfg.model).variant(cfg.variant)
        if args.input_shape:
            if args.input_shape[0] != 3:
                raise ConfigError(f"--input-shape {args.input_shape}: the model's preprocessing makes 3 channels")
            variant = dataclasses.replace(variant, height=args.input_shape[1], width=args.input_shape[2])
        if args.input_name:
            variant = dataclasses.replace(variant, input_name=args.input_name)
        onnx_path = resolve_onnx(engine_request(cfg), variant)
        req = build_request(engine_request(cfg), variant, onnx_path, file_sha256(onnx_path))
    else:
        if not cfg.onnx:
            raise ConfigError("pass --model NAME (with its spec) or --onnx PATH")
        onnx_path = Path(cfg.onnx)
        if not onnx_path.is_file():
            raise InputError("ONNX model not found", onnx_path)
        if cfg.calib_dir:
            raise ConfigError("--calib-dir needs --model: calibration images are preprocessed as the model's "
                              "spec says")
        name, fixed = _onnx_input(onnx_path)
        shape = args.input_shape or fixed
        if shape is None:
            raise ConfigError(f"input '{name}' of {onnx_path} has a dynamic image shape: pass --input-shape CxHxW")
        req = BuildRequest(onnx_path=onnx_path, onnx_sha256=file_sha256(onnx_path), precision=cfg.precision,
                           batch_size=cfg.batch_size, input_name=args.input_name or name, input_shape=tuple(shape),
                           cache=EngineCache(cfg.cache_dir), options={})
    t0 = time.perf_counter()
    try:
        engine, hit = backend.build(req)
    except SuiteError:
        raise
    except Exception as exc:  # the compilers raise their own exception types
        raise RuntimeFailure(f"{cfg.backend} engine build failed: {type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}", onnx_path) from exc
    # fp32 on ONNX Runtime runs the ONNX itself: nothing is built or cached
    cache = "none (the ONNX runs as it is)" if Path(engine) == req.onnx_path else "hit" if hit else "miss"
    return {"engine": str(engine), "cache": cache, "backend": backend.name,
            "runtime": backend.runtime_version(), "precision": req.precision, "batch_size": req.batch_size,
            "input": {req.input_name: [req.batch_size, *req.input_shape]}, "onnx": str(req.onnx_path),
            "onnx_sha256": req.onnx_sha256, "seconds": round(time.perf_counter() - t0, 3),
            **({"calibration": req.options["calibration"].describe()} if "calibration" in req.options else {})}


def main(argv=None) -> int:
    args = parse_args(argv)
    result: dict = {}

    def run() -> int:  # SIGTERM is an interrupt, so a killed build removes its temp file
        result.update(build(args))
        return 0

    def json_error(exc):
        if args.json:
            print(json.dumps({"error": str(exc), "exit_code": exc.exit_code,
                              **({"portability": exc.as_dict()} if hasattr(exc, "as_dict") else {})}))

    code = guarded(run, args.debug, "interrupted: no engine was published", json_error)
    if code:
        return code
    info = result
    if args.json:
        print(json.dumps(info))
    else:
        print(f"engine: {info['engine']}")
        print(f"cache: {info['cache']}  ({info['backend']} {info['runtime']}, {info['precision']}, "
              f"input {info['input']}, {info['seconds']:.2f} s)")
    return 0


if __name__ == "__main__":
    exit_now(main())  # after an interrupt: no wait for runtime threads
