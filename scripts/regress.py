#!/usr/bin/env python3
"""CI regression entry point over the model matrix (docs/ci-regression.md).

    scripts/regress.py run   [--models rtmdet] [--precision fp16] [--bs 1,8] [--shard 1/4] --out results/regress/RUN
    scripts/regress.py merge --out results/regress/RUN results/regress/RUN-shard1 results/regress/RUN-shard2 ...
    scripts/regress.py report results/regress/RUN [--history results/history.jsonl] [--update-readmes [DIR]]
    scripts/regress.py baseline-update results/regress/RUN --baselines DIR [--cases 'rtmdet/*/bs1/*']

Exit codes: 0 every case passed; 1 a regression or failed target; 2 configuration error; 3 infrastructure error
(a case crashed, timed out, wrote no record or measured invalidly); 4 incomplete (a merge missing shards or
outcomes; with --strict also a missing baseline / FP32 reference or an unsupported cell); 5 nothing measured (no
case, or every case an unsupported cell; --allow-empty: 0); 130 interrupted
(Ctrl-C or SIGTERM: the running case is stopped with it). The first that applies in this order wins.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

import ixuca_suite  # noqa: E402,F401  the one bootstrap: sys.path, the repo's .venv (scripts/ixuca_suite.py)

from common.ci.matrix import (KINDS, Filters, ModelMap, all_model_names, enumerate_cases, parse_shard,  # noqa: E402
                              shard)
from common.ci.regress import (EXIT_CONFIG, EXIT_EMPTY, EXIT_INCOMPLETE, EXIT_MEANING, EXIT_REGRESSION,  # noqa: E402
                               CaseOptions, ReportOptions, absolute_path, case_cost, completeness, confirm_fps_failures,
                               merge_runs, report, run_matrix, unmerged_gaps, verdicts_of)
from common.ci.verdicts import BaselineRefused, FpsRule, update_baselines  # noqa: E402
from common.config import options  # noqa: E402
from common.config.specs import load_model  # noqa: E402
from common.errors import EXIT_INTERRUPTED, SuiteError  # noqa: E402

# The suite's flags a case takes from the runner (CaseOptions' fields of the same names).
CASE_FLAGS = ("device", "dataset_dir", "annotation", "max_images", "cache_dir", "threads", "workers", "warmup_s",
              "min_duration_s", "min_iters")


def _report_args(p: argparse.ArgumentParser):
    g = p.add_argument_group("verdicts and reports")
    g.add_argument("--baselines", "--baselines-dir", dest="baselines", default=os.environ.get("REGRESS_BASELINES"),
                   help="baseline directory (default: $REGRESS_BASELINES, else <repo>/baselines; baseline-update "
                        "writes only into one named here or by $REGRESS_BASELINES)")
    g.add_argument("--device-name", default=os.environ.get("REGRESS_DEVICE_NAME"),
                   help="baseline device key, e.g. the accelerator model (default: the record's device)")
    g.add_argument("--fps-k", type=float, default=3.0, help="tolerance band = k x combined CoV (default 3)")
    g.add_argument("--fps-min-band", type=float, default=0.05, help="narrowest band, relative (default 0.05)")
    g.add_argument("--fps-max-band", type=float, default=0.30, help="widest band, relative (default 0.30)")
    g.add_argument("--fps-max-cov", type=float, default=0.10,
                   help="combined CoV above which an FPS inside the band is flagged noisy (default 0.10)")
    g.add_argument("--jumps", choices=("fail", "warn", "auto"), default="auto",
                   help="verdict of an FPS rise beyond the band (default auto: warn on a runtime that computes on "
                        "the host's cores, whose baseline may have been taken under load; fail elsewhere)")
    g.add_argument("--noisy", choices=("warn", "fail"), default="warn",
                   help="verdict of a noisy FPS inside the band (default warn)")
    g.add_argument("--acc-z", type=float, default=3.0,
                   help="accuracy baseline tolerance in standard deviations of the paired AP difference "
                        "(default 3; docs/ci-regression.md)")
    g.add_argument("--strict", action="store_true",
                   help="a missing baseline or FP32 reference and an unsupported cell fail the run (exit 4)")
    g.add_argument("--allow-empty", action="store_true",
                   help="a run that measured nothing (no case, every cell unsupported) exits 0 (default: exit 5)")
    g.add_argument("--history", default=os.environ.get("REGRESS_HISTORY"),
                   help="append-only JSONL history to append to and plot from")
    g.add_argument("--update-readmes", nargs="?", const="", default=None, metavar="DIR",
                   help="write each model's README with the results table into DIR/<model>/README.md (default "
                        "DIR: <run dir>/readmes; `--update-readmes models` updates the source tree's own)")
    g.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    g.add_argument("--html", default=None, metavar="PATH",
                   help="also write the self-contained HTML report here (default with CI=true: <run dir>/report.html)")


def _report_options(args) -> ReportOptions:
    ro = ReportOptions(device_name=args.device_name, history=absolute_path(args.history),
                       update_readmes=None if args.update_readmes is None
                       else absolute_path(args.update_readmes or None) or "",   # "": the run dir's readmes/
                       plots=not args.no_plots,
                       step_summary=os.environ.get("GITHUB_STEP_SUMMARY"), strict=args.strict,
                       allow_empty=args.allow_empty, html=absolute_path(args.html),
                       rule=FpsRule(k_sigma=args.fps_k, min_band=args.fps_min_band, max_band=args.fps_max_band,
                                    max_cov=args.fps_max_cov, jumps=args.jumps, noisy=args.noisy, acc_z=args.acc_z))
    if args.baselines:
        ro.baselines_dir = absolute_path(args.baselines)
    return ro


def build_parser() -> argparse.ArgumentParser:
    from common.config.parser import SuiteParser  # no prefix matching, did-you-mean, --version
    parser = SuiteParser(prog="regress", description=__doc__.split("\n\n")[0])
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
    c.add_argument("--no-confirm", action="store_true",
                   help="do not re-measure a performance case whose FPS fell below its band (default: re-measure "
                        "once; the case fails only when both measurements are below)")
    c.add_argument("--confirm-rounds", type=int, default=5, metavar="N",
                   help="A/B rounds of that re-measurement against the baseline's model (default 5, at least 2: "
                        "the pairs give the re-measurement its own spread)")
    c.add_argument("--onnx", action="append", metavar="MODEL[/VARIANT]=PATH",
                   help="the ONNX of a variant (MODEL alone: its default variant); repeatable")
    c.add_argument("--models-manifest", default=os.environ.get("REGRESS_MODELS"), metavar="FILE",
                   help="YAML {MODEL/VARIANT: PATH | {onnx|checkpoint|config: PATH}} (default: $REGRESS_MODELS)")
    # the suite's own flags, parsed and validated as `scripts/suite` parses them; a case gets them back as flags
    options.add_flags(run, "suite options passed to every case (unset: the case's, from the matrix and the spec)",
                      *CASE_FLAGS, defaults={"workers": 1},
                      # only these three variables reach the cases, through the runner: the others the suite reads
                      # are stripped from the cases' environment (common/ci/regress.py case_env)
                      env={"annotation": "REGRESS_ANN", **{d: None for d in CASE_FLAGS
                                                           if d not in ("dataset_dir", "cache_dir", "annotation")}})
    _report_args(run)
    merge = sub.add_parser("merge", help="combine shard run directories into one report")
    merge.add_argument("shards", nargs="+")
    merge.add_argument("--out", required=True)
    _report_args(merge)
    rep = sub.add_parser("report", help="(re)compute verdicts and reports of a run directory")
    rep.add_argument("run_dir")
    _report_args(rep)
    base = sub.add_parser("baseline-update", help="store a run's FPS and accuracy figures as the baseline")
    base.add_argument("run_dir")
    base.add_argument("--cases", default=None, help="comma-separated globs over case ids (default: all)")
    base.add_argument("--force", action="store_true", help="store failing cases too (default: refuse them)")
    _report_args(base)
    return parser


def case_options(args, environ=None) -> CaseOptions:
    """What every case of `run` gets from the runner's command line (paths made absolute)."""
    suite = {dest: options.value(args, dest, environ) for dest in CASE_FLAGS}
    suite.update(dataset_dir=absolute_path(suite["dataset_dir"]), cache_dir=absolute_path(suite["cache_dir"]),
                 annotation=absolute_path(suite["annotation"], only_if_exists=True))
    return CaseOptions(timeout_s=args.timeout, repeats=max(1, args.repeats), confirm=not args.no_confirm,
                       confirm_rounds=max(2, args.confirm_rounds), **suite)


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ropts = _report_options(args)
        if args.command == "run":
            models = args.models.split(",") if args.models else all_model_names()
            models = [m if not m.endswith((".yaml", ".yml")) else absolute_path(m) for m in models]
            model_map = ModelMap.parse(args.onnx, absolute_path(args.models_manifest))
            unknown = model_map.unknown_keys([load_model(m) for m in models])
            if unknown:
                raise SuiteError(f"--onnx / manifest names no model or variant of the matrix: {', '.join(unknown)}")
            skipped: list = []
            cases = enumerate_cases(models, Filters(models=None, variants=args.variant, precisions=args.precision,
                                                    batch_sizes=args.batch_size, backends=args.backend,
                                                    kinds=args.kind), model_map, skipped)
            if skipped:
                print(f"not in the matrix (no model given; --onnx MODEL/VARIANT=PATH): {', '.join(skipped)}")
            if args.shard:
                k, n = parse_shard(args.shard)
                cases = shard(cases, k, n, case_cost(case_options(args)))
            if not cases and not args.shard:
                raise SuiteError("the filters select no case of the matrix" + (
                    " that has a model: give one with --onnx MODEL[/VARIANT]=PATH or --models-manifest"
                    if skipped else ""))
            if args.list:
                print("\n".join(c.id for c in cases))
                return 0
            run_id = args.run_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            out = Path(absolute_path(args.out) if args.out else Path("results", "regress", run_id).resolve())
            opts = case_options(args)
            run_matrix(cases, opts, out, run_id, args.shard)
            if not cases:
                print(f"shard {args.shard} has no case: nothing to run"
                      + ("" if args.allow_empty else f"\nexit {EXIT_EMPTY}: {EXIT_MEANING[EXIT_EMPTY]}"))
                return 0 if args.allow_empty else EXIT_EMPTY
            confirm_fps_failures(cases, opts, out, ropts)
            return report(out, ropts)
        if args.command == "merge":
            out = Path(absolute_path(args.out))
            merge_runs([Path(absolute_path(s)) for s in args.shards], out)
            gaps = unmerged_gaps(out)
            if gaps:   # the shards that ran every case are the missing ones: incomplete, not a bad directory
                for gap in gaps:
                    print(f"INCOMPLETE: {gap}")
                print(f"exit {EXIT_INCOMPLETE}: {EXIT_MEANING[EXIT_INCOMPLETE]}")
                return EXIT_INCOMPLETE
            return report(out, ropts)
        if args.command == "report":
            return report(Path(absolute_path(args.run_dir)), ropts)
        # baseline-update
        if not args.baselines:  # never the source tree's baselines/ by default: a test run would dirty the clone
            raise SuiteError("baseline-update writes only where it is told: pass --baselines DIR (or set "
                             "$REGRESS_BASELINES); `--baselines baselines` writes the repo's own baselines/, to "
                             "commit")
        run_dir = Path(absolute_path(args.run_dir))
        outcomes, verdicts = verdicts_of(run_dir, ropts)
        gaps = completeness(run_dir, outcomes)
        if gaps and not args.force:
            print(f"error: refusing to store baselines from an incomplete run ({'; '.join(gaps[:3])}); "
                  "pass --force to store the cases it has", file=sys.stderr)
            return EXIT_REGRESSION
        globs = [g for g in (args.cases or "").split(",") if g]
        only = (lambda v: any(fnmatch.fnmatch(v["id"], g) for g in globs)) if globs else None
        try:
            written = update_baselines(verdicts, ropts.baselines_dir, ropts.device_name, only,
                                       {o["case"]["id"]: o for o in outcomes}, force=args.force)
        except BaselineRefused as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_REGRESSION
        for path in written:
            print(f"baseline written: {path}")
        if not written:
            print("no result to store")
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
