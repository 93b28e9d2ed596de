"""A compare report (common/compare/fidelity_judge.py) as text for the console, as a file, and the spec snippet of
an FP16 block list."""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.engine_cache import atomic_write_json

if TYPE_CHECKING:
    from common.config.specs import Variant


def format_report(report: dict) -> str:
    """The report as the console shows it: per output, the detections, the reasons and the verdict."""
    lines = [
        f" {len(report['images'])} image(s); per output: cosine, max|err| (share of range), mean|err|, "
        f"max/mean rel err, NaN/Inf"
    ]
    gated = report["tolerance"].get("outputs")  # None: every output is judged
    for name, s in report["outputs"].items():
        if gated is not None and name not in gated and "error" in s:
            # the spec judges this output by its detections only: a shape difference is expected, not a fault
            lines.append(f"  {name}: not judged as a tensor (not in fidelity.outputs): {s['error'].split(' (')[0]}")
        elif "error" in s:
            lines.append(f"  {name}: {s['error']}")
        elif "cosine" in s:
            lines.append(
                f"  {name}: cos {s['cosine']:.6f}  max {s['max_abs_err']:.4g} ({s['norm_err']:.4f})  "
                f"mean {s['mean_abs_err']:.4g}  rel {s['max_rel_err']:.3g}/{s['mean_rel_err']:.3g}  "
                f"nan {s['nan']} inf {s['inf']}"
            )
        else:
            lines.append(f"  {name}: {s['differing']:.2%} of {s['size']} values differ")
    d = report["detections"]
    if "error" in d:
        lines.append(f"  detections: {d['error']}")
    else:
        line = (
            f"  detections: {d['matched']:.1%} of {d['reference_detections']} matched (score >= "
            f"{d['score_threshold']}), mean IoU {d['mean_iou']:.4f}, mean |score diff| {d['mean_score_diff']:.4f}"
        )
        if "ap_diff" in d:
            line += f", AP {d['ap_candidate']:.4f} vs {d['ap_reference']:.4f}"
            if "ap_diff_interval" in d:
                line += (
                    f" (diff 95 % paired interval [{d['ap_diff_interval'][0]:+.4f}, {d['ap_diff_interval'][1]:+.4f}])"
                )
        lines.append(line)
    lines += [f"  FAIL: {r}" for r in report["reasons"]]
    lines.append(f" verdict: {report['verdict'].upper()}")
    return "\n".join(lines)


def write_json(path, data: dict):
    """Write a compare report atomically: a killed run never leaves half a report."""
    atomic_write_json(path, data, indent=1)


def block_list_yaml(variant: Variant, nodes: list) -> str:
    """The `build:` snippet to put under the variant in the model's spec."""
    import yaml

    build = variant.build_options
    build["fp16_block_nodes"] = list(nodes)
    return yaml.safe_dump({"build": build}, sort_keys=False, default_flow_style=False)
