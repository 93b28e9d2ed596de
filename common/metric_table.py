"""The one table of the suite's metrics and precisions: each metric's name, label, unit, direction, FPS kind and
section. Spec targets, the evaluator's summary, records, verdicts, JUnit properties, the Markdown summary and the
README results table take their names, labels and directions from here, so a metric is added in one place."""

from __future__ import annotations

from dataclasses import dataclass

PRECISIONS = ("fp32", "fp16", "int8")  # in the suite's order: the FP32 reference first


@dataclass(frozen=True)
class Metric:
    name: str  # as records, targets and baselines spell it
    label: str  # short column label (README / Markdown tables)
    unit: str  # "fraction" (0-1, shown as points x 100), "images/s" or "ms"
    higher_is_better: bool
    section: str  # "accuracy" (the 12 COCO stats) | "performance"
    description: str  # pycocotools' summary line of a COCO stat; what an FPS figure times
    fps_kind: str | None = None  # harness | compute | end_to_end: which of the three FPS this is
    judged: bool = False  # compared with a stored baseline by the regression verdicts

    @property
    def direction(self) -> str:
        """ "higher" or "lower": which way the metric improves, for messages."""
        return "higher" if self.higher_is_better else "lower"

    def text(self, value: float) -> str:
        """The value as people read it: points for a fraction, one decimal for FPS, two for milliseconds."""
        if self.unit == "fraction":
            return f"{value * 100:.2f}"
        return f"{value:.1f}" if self.unit == "images/s" else f"{value:.2f}"


def _coco(name: str, label: str, what: str, judged: bool = False) -> Metric:
    return Metric(name, label, "fraction", True, "accuracy", what, judged=judged)


METRICS: tuple[Metric, ...] = (
    _coco("AP", "AP50:95", "AP @[IoU=0.50:0.95 | area=all | maxDets=100]", judged=True),
    _coco("AP50", "AP50", "AP @[IoU=0.50 | area=all | maxDets=100]", judged=True),
    _coco("AP75", "AP75", "AP @[IoU=0.75 | area=all | maxDets=100]"),
    _coco("APs", "APs", "AP @[IoU=0.50:0.95 | area=small | maxDets=100]"),
    _coco("APm", "APm", "AP @[IoU=0.50:0.95 | area=medium | maxDets=100]"),
    _coco("APl", "APl", "AP @[IoU=0.50:0.95 | area=large | maxDets=100]"),
    _coco("AR1", "AR1", "AR @[IoU=0.50:0.95 | area=all | maxDets=1]"),
    _coco("AR10", "AR10", "AR @[IoU=0.50:0.95 | area=all | maxDets=10]"),
    _coco("AR100", "AR100", "AR @[IoU=0.50:0.95 | area=all | maxDets=100]"),
    _coco("ARs", "ARs", "AR @[IoU=0.50:0.95 | area=small | maxDets=100]"),
    _coco("ARm", "ARm", "AR @[IoU=0.50:0.95 | area=medium | maxDets=100]"),
    _coco("ARl", "ARl", "AR @[IoU=0.50:0.95 | area=large | maxDets=100]"),
    Metric(
        "fps",
        "FPS (`fps`)",
        "images/s",
        True,
        "performance",
        "harness: batch / mean time of runner.infer (padding, host/device copies, sync), the `timing` section",
        fps_kind="harness",
        judged=True,
    ),
    Metric(
        "fps_compute",
        "FPS (`fps_compute`)",
        "images/s",
        True,
        "performance",
        "compute only: batch * 1000 / mean ms of the engine alone (IGIE/TVM time_evaluator('run'), "
        "ONNX Runtime the session run), the `compute` section; what published MR-V100 figures are",
        fps_kind="compute",
    ),
    Metric(
        "fps_e2e",
        "FPS (`fps_e2e`)",
        "images/s",
        True,
        "performance",
        "end to end: JPEG read + decode, preprocessing, inference and output decoding, the `end_to_end` section",
        fps_kind="end_to_end",
    ),
    Metric("latency_mean_ms", "latency mean", "ms", False, "performance", "mean time of one runner.infer call"),
    Metric("latency_p50_ms", "latency p50", "ms", False, "performance", "median time of one runner.infer call"),
    Metric("latency_p90_ms", "latency p90", "ms", False, "performance", "90th percentile of runner.infer"),
    Metric("latency_p99_ms", "latency p99", "ms", False, "performance", "99th percentile of runner.infer"),
)
BY_NAME = {m.name: m for m in METRICS}
NAMES = tuple(BY_NAME)  # every name a target may use
COCO_STATS = tuple(m.name for m in METRICS if m.section == "accuracy")  # pycocotools' order
TIMING_METRICS = tuple(m.name for m in METRICS if m.section == "performance")
BASELINE_ACCURACY = tuple(m.name for m in METRICS if m.section == "accuracy" and m.judged)  # AP, AP50
FPS_DEFINITIONS = {m.name: m.description for m in METRICS if m.fps_kind}


def metric(name: str) -> Metric:
    """The table's entry of a metric (KeyError for a name the suite does not measure)."""
    return BY_NAME[name]


def verdict_properties() -> tuple[str, ...]:
    """The verdict values reported as JUnit properties: each judged metric, the baseline it met and the reference
    it was held against (the confirmation run for FPS; FP32 for accuracy, with the bootstrap interval of the
    metric and of its differences from both), then the image count and the accuracy tolerance."""
    out: list[str] = []
    for m in sorted((m for m in METRICS if m.judged), key=lambda m: m.section != "performance"):
        if m.section == "performance":
            out += [m.name, f"baseline_{m.name}", f"confirm_{m.name}"]
        else:
            out += [m.name, f"{m.name}_ci_lo", f"{m.name}_ci_hi", f"baseline_{m.name}", f"ref_{m.name}"]
            out += [f"{who}_{m.name}_diff_{end}" for who in ("ref", "baseline") for end in ("lo", "hi")]
    return (*out, "images", "tolerance_points")
