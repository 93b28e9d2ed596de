"""compare.py's command: a candidate engine against the FP32 reference on real images, and for an ONNX Runtime FP16
candidate out of tolerance, where FP16 goes wrong, the block list that fixes it, built and compared again."""

from __future__ import annotations

from pathlib import Path

from common.compare.fidelity_report import block_list_yaml, format_report
from common.compare.fp16_localise import localise
from common.compare.fp16_range import FP16_MAX
from common.config.options import RunConfig
from common.config.specs import load_model
from common.engine_cache import atomic_write_bytes, file_sha256
from common.harness.engine import prepare, resolve_onnx
from common.harness.reference_compare import add_fp16_range, against_reference, load_images, run_images, with_subnormals
from common.harness.requests import dataset_request, engine_request
from common.record.types import built, check_compare_report


def run_compare(
    cfg: RunConfig,
    num_images: int,
    localise_images: int = 4,
    fix: bool = True,
    out_dir: Path | None = None,
    always_localise: bool = False,
    log=print,
    range_images: int = 4,
) -> dict:
    """Reference vs candidate on real images, plus the FP16 range check of an FP16 candidate's graph on the first
    `range_images`; when out of tolerance and the candidate is an ONNX Runtime FP16 engine, localise, build the
    conversion with the found nodes blocked and compare (and range-check) it again."""
    engine = engine_request(cfg)
    variant = load_model(cfg.model).variant(cfg.variant)
    tol = variant.fidelity
    onnx_path = resolve_onnx(engine, variant)
    sha = file_sha256(onnx_path)
    images = load_images(variant, dataset_request(cfg), num_images, shard=cfg.shard)
    if cfg.shard:
        log(f"shard {cfg.shard} (from {cfg.shard_source}): the first {len(images.image_ids)} images of that shard")
    ref_p = prepare(engine.reference(), variant, sha, onnx_path)
    ref = run_images(ref_p.runner, images)
    cand_p = prepare(engine, variant, sha, onnx_path)
    report = against_reference(variant, images, tol, ref_p.runner, cand_p.runner, ref_outputs=ref)
    if cfg.shard:
        report["shard"] = {
            "shard": cfg.shard,
            "source": cfg.shard_source,
            "image_ids": [int(i) for i in images.image_ids],
        }
    log(f"== {variant.id}: {cand_p.backend.name} {cand_p.backend.device()} {cfg.precision} vs FP32 reference ==")
    add_fp16_range(report, cand_p, ref_p, images.inputs[:range_images], tol, log)
    report.update(
        model=variant.model,
        variant=variant.name,
        onnx=str(onnx_path),
        onnx_sha256=sha,
        candidate={
            "backend": cand_p.backend.name,
            "device": cand_p.backend.device(),
            "precision": cfg.precision,
            "engine": str(cand_p.engine),
        },
    )
    log(format_report(report))
    localisable = cand_p.backend.capabilities.fp16_onnx and cfg.precision == "fp16"
    if (report["verdict"] == "fail" and fix or always_localise) and localisable:
        log(
            f"localising on {min(localise_images, len(images.image_ids))} image(s): the nodes where FP16 starts to "
            f"go wrong (a float16 tensor beyond {FP16_MAX:g} or below float16's range, NaN / Inf, or cosine < "
            f"{tol.node_min_cosine}) and the nodes to keep in FP32, round by round until none is left"
        )
        loc = localise(
            onnx_path,
            images.inputs[:localise_images],
            variant.input_name,
            with_subnormals(tol, cand_p.backend),
            variant.fp16_block_ops,
            variant.fp16_block_nodes,
            log=log,
            extra_inputs=ref_p.runner.extra_feeds(1),
        )
        report["localisation"] = loc
        if not loc["clean"]:
            log(f"after {len(loc['rounds'])} rounds some nodes still leave tolerance: the block list below is partial")
        if loc["added"]:
            fixed_variant = variant.with_block_nodes(loc["block_nodes"])
            fixed_p = prepare(engine, fixed_variant, sha, onnx_path)
            fixed = against_reference(fixed_variant, images, tol, ref_p.runner, fixed_p.runner, ref_outputs=ref)
            add_fp16_range(fixed, fixed_p, ref_p, images.inputs[:range_images], tol, log=lambda *_: None)
            snippet = block_list_yaml(variant, loc["block_nodes"])
            report["fix"] = {
                "block_nodes": loc["block_nodes"],
                "engine": str(fixed_p.engine),
                "verdict": fixed["verdict"],
                "reasons": fixed["reasons"],
                "outputs": fixed["outputs"],
                "detections": fixed["detections"],
                "fp16_range": fixed.get("fp16_range"),
                "spec_snippet": snippet,
            }
            log(f"FP16 conversion with {len(loc['block_nodes'])} node(s) kept in FP32, compared again:")
            log(format_report(fixed))
            log("put this under the variant in the model's spec (models/<name>/model.yaml):")
            log("    " + snippet.rstrip().replace("\n", "\n    "))
            if out_dir is not None:
                atomic_write_bytes(Path(out_dir) / "fp16_block_nodes.yaml", snippet.encode())
        else:
            log(
                "localisation found no node to keep in FP32"
                if not loc["first_nodes"]
                else "the nodes found are already blocked: blocking cannot fix this candidate"
            )
    return built(check_compare_report, report)
