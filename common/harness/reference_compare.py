"""A candidate engine against the FP32 reference on real images: the images (preprocessed as the spec says), both
runners over them, the judged comparison (common/compare/fidelity_judge.py) and, for FP16, the range check of the
candidate's graph (common/compare/fp16_range.py). Shared by the accuracy pre-flight (preflight.py) and compare.py's
command (compare_command.py)."""

from __future__ import annotations

import dataclasses

import numpy as np

from common.compare.comparator import compare
from common.compare.fidelity_judge import Images, fidelity_check
from common.compare.fp16_range import RANGE_CHECK, inputs_digest, range_check
from common.config.options import parse_shard
from common.config.specs import Variant
from common.data.coco import DatasetRequest, image_items, read_annotations, read_image
from common.data.preprocess import Preprocessor
from common.errors import InputError
from common.harness.engine import Prepared, infer, sha256_memo_dir
from common.harness.shards import shard_bounds
from common.tolerances import Tolerance


def with_subnormals(tol: Tolerance, backend) -> Tolerance:
    """`tol` with the FP16 range check's subnormal model resolved: the spec's, else the backend's declared one."""
    if tol.fp16_subnormals:
        return tol
    return dataclasses.replace(tol, fp16_subnormals=backend.capabilities.fp16_subnormals)


def subnormals_note(tol: Tolerance, variant: Variant) -> str:
    """Which float16 subnormal model the range check used, and where it came from, for the output."""
    source = (
        "the spec's fidelity.fp16_subnormals" if variant.fidelity.fp16_subnormals else "the backend's declared default"
    )
    return f"float16 subnormals: {tol.fp16_subnormals} ({source})"


def load_images(variant: Variant, dataset: DatasetRequest, n: int, shard: str | None = None) -> Images:
    """The first n images (by id) of the dataset, or of its image shard "K/N" (common/harness/shards.py),
    preprocessed as the spec says."""
    images, ann_file = dataset.resolve(variant.annotation)
    annotations = read_annotations(ann_file)
    items = image_items(annotations, images, None if shard else n)
    if shard:
        k, total = parse_shard(shard)
        start, stop = shard_bounds(len(items), k, total)
        if stop == start:
            raise InputError(f"image shard {shard} of {len(items)} images holds no image", ann_file)
        items = items[start:stop]
    return preprocessed(variant, items[:n], annotations)


def preprocessed(variant: Variant, items: list, annotations: dict | None) -> Images:
    """`items` (ImageItem) read and preprocessed as the spec says."""
    pre = Preprocessor(variant.preprocess, variant.height, variant.width)
    x = np.empty((len(items), 3, variant.height, variant.width), np.float32)
    meta = np.empty((len(items), 6), np.float64)
    for i, it in enumerate(items):
        _, meta[i] = pre(read_image(it.path), out=x[i])
    return Images(np.array([it.image_id for it in items], np.int64), x, meta, annotations)


def run_images(runner, images: Images, batch: int = 1) -> list[dict]:
    """Per-image outputs, inferred `batch` images per call (a fixed-batch engine pads the last call itself)."""
    per_image = []
    for s in range(0, len(images.image_ids), batch):
        ids = images.image_ids[s : s + batch]
        out = infer(runner, images.inputs[s : s + batch], ids)
        if all(v.ndim and v.shape[0] == len(ids) for v in out.values()):
            per_image += [{k: v[i : i + 1] for k, v in out.items()} for i in range(len(ids))]
        else:  # an output without a batch dimension: one image per call
            per_image += [infer(runner, images.inputs[s + i : s + i + 1], ids[i : i + 1]) for i in range(len(ids))]
    return per_image


def against_reference(
    variant: Variant,
    images: Images,
    tol: Tolerance,
    ref_runner,
    cand_runner,
    batch: int = 1,
    ref_outputs: list | None = None,
) -> dict:
    """Both runners on the same images through the comparator; the candidate's report."""
    results = {
        "reference": ref_outputs if ref_outputs is not None else run_images(ref_runner, images),
        "candidate": run_images(cand_runner, images, batch),
    }
    return compare(results, fidelity_check(variant, images, tol))["candidate"].details


def add_fp16_range(
    report: dict, prepared: Prepared, ref_prepared: Prepared, x: np.ndarray, tol: Tolerance, log=print
) -> None:
    """For an FP16 candidate: the FP16 range check (common/compare/fp16_range.py) of its graph on the images `x`,
    stored under `fp16_range`; a failure fails the report. The CPU's FP16 outputs can be perfect while the graph
    overflows on a device, so this, not the outputs, is what says the FP16 graph is sound."""
    if prepared.request.precision != "fp16":
        return
    variant = prepared.variant
    tol = with_subnormals(tol, prepared.backend)
    own = prepared.backend.capabilities.fp16_onnx
    log(f"fp16 on {prepared.backend.name} {prepared.backend.device()}: {prepared.backend.precision_note('fp16')}")
    block_ops, block_nodes = variant.fp16_block_ops, variant.fp16_block_nodes
    extra = ref_prepared.runner.extra_feeds(1)
    answer, remembered = prepared.request.cache.remembered(
        "fp16-range",
        _range_check_key(prepared, own, block_ops, block_nodes, x, extra, tol),
        lambda: range_check(
            prepared.onnx_path,
            x,
            variant.input_name,
            tol,
            prepared.engine if own else None,
            block_ops,
            block_nodes,
            extra_inputs=extra,
        ),
    )
    assert isinstance(answer, dict), "range_check's answer is a JSON object"
    result: dict = answer
    result["graph"] = "the candidate engine" if own else "the ONNX Runtime float16 conversion (stand-in)"
    result["remembered"] = remembered
    result["subnormals_note"] = subnormals_note(tol, variant)
    report["fp16_range"] = result
    log(
        f" FP16 range check on {result['images']} image(s), {result['float16_tensors']} float16 tensor(s) of "
        f"{result['graph']}, {result['subnormals_note']}: {result['verdict'].upper()}"
        f"{' (remembered)' if remembered else ''}"
    )
    if result["verdict"] != "pass":
        report["verdict"] = "fail"
        report["reasons"] = list(report["reasons"]) + result["reasons"]


def _range_check_key(prepared: Prepared, own: bool, block_ops, block_nodes, x, extra, tol) -> str:
    """Everything the range check's answer depends on: the FP32 ONNX, the FP16 graph (the engine's own bytes, or
    the float16 conversion's settings and version), the images, the node tolerances, the check's and the ONNX
    Runtime's versions (it runs both graphs there). The same FP16 graph is judged once, not by every case of a
    matrix (each batch size, each repeat)."""
    import onnxruntime as ort

    from common.engine_cache import cache_key, file_sha256_memo
    from common.runtime.backends.onnxruntime_backend import FP16_CONVERTER

    graph = (
        {"engine": file_sha256_memo(prepared.engine, sha256_memo_dir(prepared.asked.cache_dir))}
        if own
        else {"block_ops": block_ops, "block_nodes": block_nodes, "converter": FP16_CONVERTER}
    )
    return cache_key(
        prepared.onnx_sha256,
        check=RANGE_CHECK,
        runtime=ort.__version__,
        **graph,
        inputs=inputs_digest(x, extra),
        node_tol=[tol.node_min_cosine, tol.node_max_norm_err],
        subnormals=tol.fp16_subnormals,
    )
