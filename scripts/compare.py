#!/usr/bin/env python3
"""FP16 fidelity: a candidate engine against the FP32 reference on real images (docs/fidelity.md).

    scripts/compare.py --model rtmdet --precision fp16 --dataset-dir DIR --ann FILE [--images 8] [--report PATH]

Reference: ONNX Runtime on the CPU running the ONNX as it is. Candidate: any backend / device / precision, built
as the accuracy run builds it. An FP16 candidate's graph is also range-checked: every float16 tensor judged from
the FP32 values (overflow, underflow, NaN / Inf), which the CPU's FP16 outputs can hide. When they disagree and
the candidate is ONNX Runtime FP16, the nodes where FP16 starts to go wrong are found, an FP16 conversion keeping
them in FP32 is built and compared again, and the block list is printed as a spec snippet (and written beside
the report).

Exit codes: 0 within tolerance, 1 out of tolerance, 2 bad input or configuration, 3 runtime failure,
130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import ixuca_suite  # noqa: E402,F401  the one bootstrap: sys.path, the repo's .venv (scripts/ixuca_suite.py)

from common.cli import exit_now, guarded, html_path  # noqa: E402
from common.errors import EXIT_PASS, EXIT_TARGET_FAILED  # noqa: E402
from common.compare.fidelity_report import write_json  # noqa: E402
from common.harness.compare_command import run_compare  # noqa: E402
from common.harness.requests import dataset_request  # noqa: E402
from common.config.specs import load_model  # noqa: E402
from common.config import options  # noqa: E402
from common.report.html import compare_html, write_html  # noqa: E402
from common.config.options import add_groups, config_from_args, positive_int  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    from common.config.parser import SuiteParser  # no prefix matching, did-you-mean, --version
    p = SuiteParser(prog="compare", description=__doc__.split("\n\n")[0])
    add_groups(p, "model", "engine", "dataset", "output", defaults={"precision": "fp16"})
    options.add_flags(p, "image shard", "shard")
    p.add_argument("--images", type=positive_int, default=8, help="images compared, the first N by id (of the "
                   "--shard, when given; default: 8)")
    p.add_argument("--range-images", type=positive_int, default=4,
                   help="FP16: images the range check of every float16 tensor runs on, the first N compared "
                        "(default: 4)")
    p.add_argument("--localise-images", type=positive_int, default=4,
                   help="images the localisation runs on; every intermediate tensor is kept for each (default: 4)")
    p.add_argument("--localise", action="store_true", help="localise even when the candidate is within tolerance")
    p.add_argument("--no-fix", action="store_true", help="report only: no localisation, no fixed conversion")
    p.add_argument("--report", metavar="PATH",
                   help="JSON report (default: <results-dir>/compare/<model>_<variant>_<backend>_<precision>.json)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        cfg = config_from_args(args)
        report_path = Path(args.report) if args.report else None
        out_dir = report_path.parent if report_path else Path(cfg.results_dir) / "compare"
        report = run_compare(cfg, args.images, args.localise_images, fix=not args.no_fix, out_dir=out_dir,
                             always_localise=args.localise, range_images=args.range_images)
        if not args.no_record:
            report_path = report_path or out_dir / (f"{report['model']}_{report['variant']}_{cfg.backend}_"
                                                    f"{cfg.precision}.json")
            write_json(report_path, report)
            print(f" report: {report_path}")
        html = html_path(args.html, report_path)
        if html:
            print(f" HTML report: {write_html(html, compare_html(report, dataset_request(cfg), load_model(cfg.model).variant(cfg.variant).annotation))}")
        return EXIT_PASS if report["verdict"] == "pass" else EXIT_TARGET_FAILED

    return guarded(run, args.debug)


if __name__ == "__main__":
    exit_now(main())  # after an interrupt: no wait for runtime threads
