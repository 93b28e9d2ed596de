"""Checkpoint -> ONNX, shared by every model's export.py.

A model folder's export.py knows how to build its network from a checkpoint (+ config) and defines

    export_onnx(checkpoint: Path, config: Path | None, out: Path, *, variant, opset: int) -> None

which writes a raw (unsimplified) ONNX with a dynamic batch dimension to `out`. Everything else is here, once:
the torch.onnx call, onnxsim that keeps the batch dimension dynamic, and a cache so the accuracy and
performance scripts can take `--checkpoint/--config` and export once per (checkpoint, config, exporter, opset).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from common import REPO_ROOT, load_file_module
from common.engine_cache import EngineCache, cache_key, file_sha256
from common.errors import ConfigError, InputError, RuntimeFailure, first_line

DEFAULT_OPSET = 17


def torch_export(module, example, out: Path, *, input_name: str, output_names: list, opset: int = DEFAULT_OPSET):
    """Export a torch module with the batch dimension of the input and of every output dynamic."""
    import torch

    axes = {input_name: {0: "batch"}, **{name: {0: "batch"} for name in output_names}}
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            (example,),
            str(out),
            input_names=[input_name],
            output_names=output_names,
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def batch_is_dynamic(model, input_name: str) -> bool:
    for inp in model.graph.input:
        if inp.name == input_name:
            dim = inp.type.tensor_type.shape.dim[0]
            return not dim.HasField("dim_value")
    raise InputError(f"the ONNX graph has no input '{input_name}'")


def simplify(src: Path, dst: Path, input_name: str):
    """onnxsim src -> dst. A batch dimension that was dynamic must stay dynamic (onnxsim can fold it into a
    constant when shapes are fixed for its check; that graph would then run at one batch size only)."""
    import onnx
    import onnxsim

    model = onnx.load(str(src))
    dynamic = batch_is_dynamic(model, input_name)
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises RuntimeError / onnx errors of its own
        raise RuntimeFailure(f"onnxsim failed: {type(exc).__name__}: {first_line(exc)}", src) from None
    if not ok:
        raise RuntimeFailure("onnxsim's check of the simplified graph against the original failed", src)
    if dynamic and not batch_is_dynamic(simplified, input_name):
        raise RuntimeFailure(f"onnxsim folded the dynamic batch dimension of '{input_name}' into a constant", src)
    onnx.save(simplified, str(dst))


def load_exporter(model_dir: Path):
    """The export module of a model folder (models/<name>/export.py), loaded by path."""
    path = Path(model_dir) / "export.py"
    if not path.is_file():
        raise ConfigError(f"model {Path(model_dir).name} has no export.py: pass an ONNX file with --onnx", path)
    module = load_file_module(f"suite_export_{Path(model_dir).name}", path)
    if not hasattr(module, "export_onnx"):
        raise ConfigError("export.py defines no export_onnx(checkpoint, config, out, *, variant, opset)", path)
    return module, path


def checkpoint_digest(path: Path) -> str:
    """sha256 of a checkpoint file, or of a checkpoint directory's files (names and contents, e.g. a
    transformers directory with config.json + model.safetensors), so any edit inside it means a new export."""
    if path.is_file():
        return file_sha256(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError("checkpoint directory has no files", path)
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def exporter_digest(model_dir: Path) -> str:
    """Hash of every Python source of the model folder: export.py may import its own sibling modules."""
    h = hashlib.sha256()
    for f in sorted(Path(model_dir).rglob("*.py")):
        h.update(f"{f.relative_to(model_dir).as_posix()}\0".encode() + f.read_bytes())
    return h.hexdigest()


def export_cached(
    variant, checkpoint: str | Path, config: str | Path | None, cache_dir: str | Path, opset: int = DEFAULT_OPSET
) -> Path:
    """The simplified ONNX for a checkpoint (+ config), exported once and reused while the checkpoint, the
    config, the exporter's source and the opset are unchanged."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise InputError("checkpoint not found", checkpoint)
    if not config and variant.checkpoint_config:
        # the spec ships a config for its checkpoint: a user with only the .pth needs no --config
        config = REPO_ROOT / variant.checkpoint_config
    config = Path(config) if config else None
    if config is not None and not config.is_file():
        raise InputError("model config not found", config)
    model_dir = REPO_ROOT / "models" / variant.model
    module, exporter = load_exporter(model_dir)
    key = cache_key(
        checkpoint_digest(checkpoint),
        config=file_sha256(config) if config else None,
        exporter=exporter_digest(model_dir),
        opset=opset,
        variant=variant.name,
        kind="export",
    )

    hidden: list = []

    def build(tmp: Path):
        import time
        import warnings

        print(
            f"export: {checkpoint} -> ONNX (opset {opset}, then onnxsim); not in the export cache yet, this "
            "takes a while",
            file=sys.stderr,
            flush=True,
        )
        t0 = time.perf_counter()
        raw = tmp.with_suffix(".raw.onnx")
        try:
            # the tracer's and onnxsim's warnings (hundreds of lines for RT-DETR) say nothing a user acts on
            with warnings.catch_warnings(record=not os.environ.get("SUITE_EXPORT_WARNINGS")) as caught:
                module.export_onnx(checkpoint, config, raw, variant=variant, opset=opset)
                simplify(raw, tmp, variant.input_name)
            hidden.extend(caught or [])
        finally:
            raw.unlink(missing_ok=True)
        hidden.append(time.perf_counter() - t0)

    path, hit = EngineCache(cache_dir).get_or_build(
        key,
        ".onnx",
        build,
        {
            "checkpoint": str(checkpoint),
            "config": str(config) if config else None,
            "opset": opset,
            "model": variant.model,
            "variant": variant.name,
        },
    )
    if hit:
        print(f"onnx: {path.resolve()} (from the export cache: {checkpoint})", file=sys.stderr)
    else:
        seconds, warned = (hidden[-1], len(hidden) - 1) if hidden else (0.0, 0)
        print(
            f"onnx: {path.resolve()} (exported now in {seconds:.0f} s and cached"
            + (f"; {warned} exporter warnings hidden, SUITE_EXPORT_WARNINGS=1 shows them" if warned else "")
            + ")",
            file=sys.stderr,
        )
    return path
