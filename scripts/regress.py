#!/usr/bin/env python3
"""CI regression entry point over the model matrix (docs/ci-regression.md).

    scripts/regress.py run   [--models rtmdet] [--precision fp16] [--bs 1,8] [--shard 1/4] --out results/regress/RUN
    scripts/regress.py merge --out results/regress/RUN results/regress/RUN-shard1 results/regress/RUN-shard2 ...
    scripts/regress.py report results/regress/RUN [--history results/history.jsonl] [--update-readmes]
    scripts/regress.py baseline-update results/regress/RUN [--cases 'rtmdet/*/bs1/*']

Exit codes: 0 every case passed, 1 a regression, failed target or crashed case, 2 configuration error,
130 interrupted (Ctrl-C or SIGTERM: the running case is stopped with it).
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / ".importpath"))
from common.interpreter import use_project_python  # noqa: E402

use_project_python()

from common.errors import EXIT_INTERRUPTED, SuiteError  # noqa: E402
from common.matrix import KINDS, Filters, all_model_names, enumerate_cases, parse_shard, shard  # noqa: E402
from common.regress import (EXIT_CONFIG, CaseOptions, ReportOptions, merge_runs, report, run_matrix,  # noqa: E402
                            verdicts_of)
from common.verdicts import FpsRule, update_baselines  # noqa: E402


def _report_args(p: argparse.ArgumentParser):
    g = p.add_argument_group("verdicts and reports")
    g.add_argument("--baselines", default=None, help="baseline directory (default: <repo>/baselines)")
    g.add_argument("--device-name", default=os.environ.get("REGRESS_DEVICE_NAME"),
                   help="baseline device key, e.g. the accelerator model (default: the record's device)")
    g.add_argument("--fps-k", type=float, default=3.0, help="tolerance band = k x combined CoV (default 3)")
    g.add_argument("--fps-min-band", type=float, default=0.05, help="narrowest band, relative (default 0.05)")
    g.add_argument("--fps-max-band", type=float, default=0.30, help="widest band, relative (default 0.30)")
    g.add_argument("--fps-max-cov", type=float, default=0.10, help="CoV above which FPS is flagged noisy")
    g.add_argument("--jumps", choices=("fail", "warn"), default="fail", help="an FPS rise beyond the band")
    g.add_argument("--noisy", choices=("warn", "fail"), default="warn", help="a noisy FPS inside the band")
    g.add_argument("--history", default=os.environ.get("REGRESS_HISTORY"),
                   help="append-only JSONL history to append to and plot from")
    g.add_argument("--update-readmes", action="store_true",
                   help="write the results table into models/<name>/README.md")
    g.add_argument("--no-plots", action="store_true")


def _report_options(args) -> ReportOptions:
    ro = ReportOptions(device_name=args.device_name, history=args.history, update_readmes=args.update_readmes,
                       plots=not args.no_plots, step_summary=os.environ.get("GITHUB_STEP_SUMMARY"),
                       rule=FpsRule(k_sigma=args.fps_k, min_band=args.fps_min_band, max_band=args.fps_max_band,
                                    max_cov=args.fps_max_cov, jumps=args.jumps, noisy=args.noisy))
    if args.baselines:
        ro.baselines_dir = args.baselines
    return ro


def _onnx_map(items) -> dict:
    out = {}
    for item in items or []:
        model, sep, path = item.partition("=")
        if not sep or not model or not path:
            raise SuiteError(f"--onnx expects MODEL=PATH, got {item!r}")
        out[model] = path
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regress", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the (filtered, sharded) matrix, then report")
    f = run.add_argument_group("matrix filters (comma-separated globs)")
    f.add_argument("--models", default=None, help="model names or model.yaml paths (default: every models/*)")
    f.add_argument("--variant", default=None)
    f.add_argument("--precision", default=None)
    f.add_argument("--bs", "--batch-size", dest="batch_size", default=None)
    f.add_argument("--backend", default=None)
    f.add_argument("--kind", default=None, help=f"{' | '.join(KINDS)}")
    run.add_argument("--shard", default=None, help="k/n: run the k-th of n deterministic slices")
    run.add_argument("--list", action="store_true", help="print the cases and exit")
    run.add_argument("--out", default=None, help="run directory (default: results/regress/<run id>)")
    run.add_argument("--run-id", default=os.environ.get("REGRESS_RUN_ID"),
                     help="id shared by the shards of one CI pipeline (default: a UTC timestamp)")
    c = run.add_argument_group("case options (passed to every `python -m common.cli` case)")
    c.add_argument("--timeout", type=float, default=1800.0, help="seconds per case (default 1800)")
    c.add_argument("--repeats", type=int, default=3, help="performance measurements per case (default 3)")
    c.add_argument("--device", default=None)
    c.add_argument("--dataset-dir", default=os.environ.get("DATASETS_DIR"))
    c.add_argument("--ann", default=None, help="annotation file for every accuracy case")
    c.add_argument("--max-images", type=int, default=None)
    c.add_argument("--onnx", action="append", help="MODEL=PATH (repeatable)")
    c.add_argument("--cache-dir", default=os.environ.get("ENGINE_CACHE_DIR"))
    c.add_argument("--threads", type=int, default=0)
    c.add_argument("--workers", type=int, default=1)
    c.add_argument("--warmup", type=float, default=None)
    c.add_argument("--min-duration", type=float, default=None)
    c.add_argument("--min-iters", type=int, default=None)
    _report_args(run)
    merge = sub.add_parser("merge", help="combine shard run directories into one report")
    merge.add_argument("shards", nargs="+")
    merge.add_argument("--out", required=True)
    _report_args(merge)
    rep = sub.add_parser("report", help="(re)compute verdicts and reports of a run directory")
    rep.add_argument("run_dir")
    _report_args(rep)
    base = sub.add_parser("baseline-update", help="store a run's measured FPS as the baseline")
    base.add_argument("run_dir")
    base.add_argument("--cases", default=None, help="comma-separated globs over case ids (default: all)")
    _report_args(base)
    return parser


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ropts = _report_options(args)
        if args.command == "run":
            models = args.models.split(",") if args.models else all_model_names()
            cases = enumerate_cases(models, Filters(models=None, variants=args.variant, precisions=args.precision,
                                                    batch_sizes=args.batch_size, backends=args.backend,
                                                    kinds=args.kind))
            if args.shard:
                k, n = parse_shard(args.shard)
                cases = shard(cases, k, n)
            if not cases and not args.shard:
                raise SuiteError("the filters select no case of the matrix")
            if args.list:
                print("\n".join(c.id for c in cases))
                return 0
            run_id = args.run_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            out = Path(args.out or Path("results") / "regress" / run_id)
            opts = CaseOptions(timeout_s=args.timeout, repeats=max(1, args.repeats), device=args.device,
                               dataset_dir=args.dataset_dir, annotation=args.ann, max_images=args.max_images,
                               onnx=_onnx_map(args.onnx), cache_dir=args.cache_dir, threads=args.threads,
                               workers=args.workers, warmup_s=args.warmup, min_duration_s=args.min_duration,
                               min_iters=args.min_iters)
            run_matrix(cases, opts, out, run_id, args.shard)
            if not cases:
                print(f"shard {args.shard} has no case: nothing to run")
                return 0
            return report(out, ropts)
        if args.command == "merge":
            out = Path(args.out)
            merge_runs([Path(s) for s in args.shards], out)
            return report(out, ropts)
        if args.command == "report":
            return report(Path(args.run_dir), ropts)
        # baseline-update
        _, verdicts = verdicts_of(Path(args.run_dir), ropts)
        globs = [g for g in (args.cases or "").split(",") if g]
        only = (lambda v: any(fnmatch.fnmatch(v["id"], g) for g in globs)) if globs else None
        written = update_baselines(verdicts, ropts.baselines_dir, ropts.device_name, only)
        for path in written:
            print(f"baseline written: {path}")
        if not written:
            print("no performance result to store")
        return 0
    except SuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("\ninterrupted: the running case was stopped; finished cases are in the run directory",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_sigterm)   # a cancelled CI job stops the running case too
    sys.exit(main())
