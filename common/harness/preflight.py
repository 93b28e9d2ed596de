"""The pre-flight of an accuracy run: its engine against the FP32 reference on the first few images (and, for FP16,
the range check of its graph) before the full pass, so a broken engine fails in seconds (docs/fidelity.md)."""

from __future__ import annotations

from common.compare.fidelity_report import format_report
from common.errors import EXIT_TARGET_FAILED, SuiteError
from common.harness.engine import Prepared, prepare
from common.harness.reference_compare import add_fp16_range, against_reference, preprocessed


class FidelityFailure(SuiteError):
    """The candidate engine's outputs are out of tolerance against the FP32 reference."""

    exit_code = EXIT_TARGET_FAILED
    report: dict | None = None  # the comparison that failed, when a preflight raised it


def preflight(prepared: Prepared, n_images: int, items: list, annotations: dict) -> dict:
    """Compare the accuracy run's engine with the FP32 reference on the first `n_images` of `items` (and, for FP16,
    range-check its graph); raise FidelityFailure (exit 1, carrying the report) when out of tolerance, so a broken
    engine fails before the full pass."""
    asked = prepared.asked
    variant = prepared.variant
    tol = variant.fidelity
    if asked.precision == "int8":  # INT8 has its own, looser tolerance (common/runtime/quantize.py)
        from common.runtime.quantize import preflight_tolerance

        tol = preflight_tolerance(variant, tol)
    images = preprocessed(variant, items[:n_images], annotations)
    ref = prepare(asked.reference(), variant, prepared.onnx_sha256, prepared.onnx_path)
    report = against_reference(variant, images, tol, ref.runner, prepared.runner, asked.batch_size)
    add_fp16_range(report, prepared, ref, images.inputs, tol, log=lambda *_: None)
    status = "ok" if report["verdict"] == "pass" else "FAIL"
    n = len(images.image_ids)
    print(f"preflight: {asked.backend} {asked.precision} vs FP32 reference on {n} image(s): {status}")
    if "fp16_range" in report:
        r = report["fp16_range"]
        print(
            f" fp16 on {prepared.backend.name} {prepared.backend.device()}: {prepared.backend.precision_note('fp16')}"
        )
        print(
            f" FP16 range check: {r['float16_tensors']} float16 tensor(s) of {r['graph']}, {r['subnormals_note']}: "
            f"{r['verdict'].upper()}"
            + (" (remembered: the same graph, images and tolerances were judged before)" if r["remembered"] else "")
        )
    if report["verdict"] != "pass":
        print(format_report(report))
        exc = FidelityFailure(
            "preflight: the engine is out of tolerance against the FP32 reference on "
            f"{len(images.image_ids)} image(s): "
            + "; ".join(report["reasons"])
            + " (see docs/fidelity.md; --preflight 0 skips this check)"
        )
        exc.report = report
        raise exc
    return report
