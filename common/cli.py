"""Command line of the suite: the commands the bash scripts call.

    python -m common.cli accuracy    --model rtmdet --precision fp16 --bs 1 [...]
    python -m common.cli performance --model rtmdet --precision fp16 --bs 32 [...]
    python -m common.cli env         (the runtimes and their capabilities)
    python -m common.cli merge DIR... (the image shards of one accuracy run: one record, evaluated once)

Flags, their defaults and environment variables are declared once, in common/config/options.py.

Exit codes: 0 every target held, 1 a target or an output check failed, 2 bad input or configuration (merge: also
a duplicated shard or shards that disagree on what they ran), 3 the runtime failed (--devices: a worker died),
4 merge: a shard is missing, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

if __name__ == "__main__":  # scripts/suite runs $PYTHON as given: one clear line if it lacks the packages
    from common.interpreter import require_packages

    require_packages("$PYTHON" if os.environ.get("PYTHON") else "scripts/suite")

from common.config.options import EVALUATORS, add_flags, add_groups, config_from_args
from common.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, SuiteError
from common.evaluate.metrics import format_coverage, format_stats
from common.harness.runs import run_accuracy, run_performance
from common.record.results import exit_code_of, write_record


def build_parser() -> argparse.ArgumentParser:
    """The `suite` command line: every sub-command with its flag groups (common/config/options.py)."""
    from common.config.parser import SuiteParser  # no prefix matching, did-you-mean, --version

    parser = SuiteParser(prog="suite", description="Inference validation suite")
    sub = parser.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy", help="COCO accuracy run")
    add_groups(acc, "model", "engine", "dataset", "output", "accuracy")
    perf = sub.add_parser("performance", help="throughput / latency run")
    add_groups(perf, "model", "engine", "dataset", "output", "timing")
    merge = sub.add_parser(
        "merge",
        help="join the image shards of one accuracy run (their results dirs, any "
        "order) into one accuracy record, evaluated once over every image",
    )
    merge.add_argument("dirs", nargs="+", metavar="DIR", help="results dirs of the shards (searched recursively)")
    merge.add_argument(
        "--ann",
        "--annotation",
        dest="annotation",
        default=None,
        help="the annotation file on this machine (default: the path the shards read; checked by sha256)",
    )
    merge.add_argument(
        "--evaluator",
        choices=EVALUATORS,
        default=None,
        help="COCO metrics engine (default: incremental; same 12 stats)",
    )
    merge.add_argument(
        "--results-dir",
        default=os.environ.get("RESULTS_DIR") or "results",
        help="where the merged record goes (default: results; $RESULTS_DIR)",
    )
    merge.add_argument(
        "--save-detections",
        dest="detections_out",
        metavar="PATH",
        help="also write the union of the detections as COCO results JSON",
    )
    merge.add_argument("--no-record", action="store_true", help="print only; write no merged record")
    merge.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    lgen = sub.add_parser(
        "loadgen", help="MLPerf LoadGen scenario (SingleStream, MultiStream, Server, Offline; docs/loadgen.md)"
    )
    add_groups(lgen, "model", "engine", "dataset", "output", "loadgen", required=("model", "lg_scenario"))
    add_flags(
        lgen,
        "run options",
        "max_images",
        "workers",
        "streams",
        "evaluator",
        "replay_dir",
        "replay_fps",
        "input_cache",
        "no_progress",
    )
    env = sub.add_parser("env", help="the runtimes: version, available here or why not, capabilities")
    env.add_argument("--json", action="store_true", help="print the table as JSON")
    runs = sub.add_parser(
        "runs",
        help="the recent result records as a table (model, backend, precision, batch, "
        "images, AP, FPS and which FPS, verdict)",
    )
    runs.add_argument(
        "--results-dir",
        default=os.environ.get("RESULTS_DIR") or "results",
        help="where the records are (default: results; $RESULTS_DIR); searched recursively",
    )
    runs.add_argument("-n", "--last", type=int, default=20, help="how many, newest last (default 20)")
    diff = sub.add_parser(
        "diff", help="two result records side by side: every metric, its change, the settings that differ"
    )
    diff.add_argument("a", help="a record file (or its number in `suite runs`)")
    diff.add_argument("b", help="the other record")
    diff.add_argument(
        "--results-dir",
        default=os.environ.get("RESULTS_DIR") or "results",
        help="where `suite runs` numbers refer to (default: results)",
    )
    return parser


def print_env(as_json: bool) -> int:
    from common.runtime.backends import environment_table

    rows = environment_table()
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'runtime':<12} {'version':<26} {'available':<9} {'precisions':<15} {'devices':<22} "
        f"{'batch':<7} {'timer':<6} {'host cores':<10} telemetry"
    )
    for r in rows:
        c = r["capabilities"]
        print(
            f"{r['backend']:<12} {r['version'] or '-':<26} {'yes' if r['available'] else 'no':<9} "
            f"{','.join(c['precisions']):<15} {','.join(c['devices']):<22} "
            f"{'any' if c['dynamic_batch'] else 'fixed':<7} {'device' if c['device_timer'] else 'host':<6} "
            f"{'yes' if c['host_compute'] else 'no':<10} "
            f"{', '.join(f'{d}: {t}' for d, t in c['telemetry']) or 'host'}"
            + ("  [FP32 reference]" if c["reference"] else "")
        )
        if not r["available"]:
            print(f"{'':<12} why not: {r['why_not']}")
    return 0


def html_path(given, beside=None):
    """Where the HTML report goes: --html, else (CI=true) next to the record or report, else nowhere."""
    if given:
        return Path(given)
    if beside is not None and os.environ.get("CI") == "true":
        return Path(beside).with_suffix(".html")
    return None


def print_summary(record: dict, path=None):
    head = (
        f"== {record['model']}/{record['variant']} | {record['backend']} {record['device']} "
        f"{record['precision']} | batch {record['batch_size']} | {record['kind']} =="
    )
    print(head)
    if record["kind"] == "accuracy-shard":
        s, d = record["shard"], record["dataset"]
        print(
            f" shard {s['index']}/{s['total']} (from {s['source']}): {d['num_images']} of {s['all_images']} images"
            f", {record['num_detections']} detections"
            + (f"; {record['run']['wall_s']:.1f} s wall" if record.get("run") else "")
        )
        print(
            " partial: no metrics and no target checked here; `scripts/suite merge` evaluates every shard's "
            "detections once" + (f" (shard record: {record['path']})" if record.get("path") else "")
        )
        for reason in record["reasons"]:
            print(f" FAIL: {reason}")
        return
    if record["kind"] == "loadgen":
        from common.harness.loadgen_run import format_loadgen

        print(format_loadgen(record))
        if record["loadgen"]["mode"] == "accuracy":
            print(format_stats(record["metrics"]))
    elif record["kind"] == "accuracy" and record["dataset"].get("stopped_by"):
        print(f" stopped by the {record['dataset']['stopped_by']} before the full pass: no metrics")
    elif record["kind"] == "accuracy":
        m, d = record["metrics"], record["dataset"]
        print(f" dataset: {d['num_images']} images, categories {d['categories']}, {d['annotation']}")
        print(format_stats(m))
        print(f" mAP@0.5:0.95 = {m['AP']:.4f}   mAP@0.5 = {m['AP50']:.4f}   (on {d['num_images']} images)")
        ci = (record.get("metrics_ci") or {}).get("stats")
        if ci:
            print(
                f" 95 % intervals ({record['metrics_ci']['resamples']} bootstrap resamples of the images): "
                f"AP [{ci['AP'][0]:.4f}, {ci['AP'][1]:.4f}]   AP50 [{ci['AP50'][0]:.4f}, {ci['AP50'][1]:.4f}]"
            )
        if d.get("category_coverage"):
            print(format_coverage(d["category_coverage"]))
            if d["category_coverage"]["warning"]:
                print(f" WARNING: {d['category_coverage']['warning']}")
        r = record["run"]
        if record.get("merged_from"):
            m = record["merged_from"]
            sizes = ", ".join(f"{x['index']}/{x['total']}: {x['images']}" for x in m)
            print(
                f" merged {len(m)} shards ({sizes} images); slowest shard {r['slowest_shard_s']:.1f} s, "
                f"evaluation {r['evaluate_s']:.2f} s"
            )
        else:
            print(f" run: {r['wall_s']:.1f} s wall, {r['images_per_s']:.1f} images/s")
    else:
        from common.harness.timing import TimingStats, format_timing
        from common.runtime.telemetry import format_telemetry

        print(f" input: {record['input']}")
        print(format_timing(TimingStats(**record["timing"])))
        if "compute" in record:
            c, e = record["compute"], record["end_to_end"]
            same = (
                ""
                if c["method"] == "time_evaluator"
                else "; no device timer on this runtime: the same measurement as fps above"
            )
            print(
                f" compute     {c['mean_ms']:.3f} ms mean per batch, {c['fps']:.2f} FPS compute-only = fps_compute "
                f"({c['method']}{same})"
            )
            above = (
                " (above fps: a separate measurement on a shared CPU, noise; it cannot truly be faster)"
                if e["stats"] and e["stats"]["fps"] > record["timing"]["fps"]
                else ""
            )
            print(
                " end-to-end  "
                + (
                    f"{e['stats']['mean_ms']:.3f} ms mean per batch, {e['stats']['fps']:.2f} FPS = "
                    f"fps_e2e (read + preprocess + infer + decode, {e['images']} images){above}"
                    if e["stats"]
                    else f"not measured: {e['reason']}"
                )
            )
            print(format_telemetry(record["telemetry"]))
    for c in record["checks"]:
        if c["status"] == "not_applicable":
            continue
        op = ">=" if c["bound"] == "min" else "<="
        if c["status"] == "not_judged":
            print(f" target {c['metric']} {op} {c['limit']:g}: {c['value']:.4f} not judged: {c['why']}")
            continue
        print(f" target {c['metric']} {op} {c['limit']:g}: {c['value']:.4f} {c['status'].upper()}")
    if record["verdict"] == "unchecked" and any(c["status"] == "not_judged" for c in record["checks"]):
        print(" no target was judged: this run evaluated fewer images than they are declared for")
    elif record["verdict"] == "unchecked":
        print(" no target applies to this backend/device/precision/batch: nothing was checked")
    for reason in record["reasons"]:
        print(f" FAIL: {reason}")
    from common.record.listing import artifact_lines

    for line in artifact_lines(record):
        print(line)
    print(f" verdict: {record['verdict'].upper()}" + (f"   record: {Path(path).resolve()}" if path else ""))


class _Interrupts:
    """SIGINT and SIGTERM while a command runs: the first raises KeyboardInterrupt in the main thread; every
    later one is absorbed, so a second Ctrl-C (or a SIGTERM right after one) cannot interrupt the shutdown the
    first one started (a KeyboardInterrupt inside clean-up gave a traceback; one while the interpreter tore
    down a runtime whose threads still ran gave `terminate called without an active exception`, exit 134)."""

    def __init__(self):
        self.count = 0

    def __call__(self, signum, frame):
        self.count += 1
        if self.count == 1:
            raise KeyboardInterrupt

    def install(self):
        self.count = 0
        if threading.current_thread() is threading.main_thread():  # signal.signal works only there
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self)


_interrupts = _Interrupts()


def guarded(action, debug: bool = False, interrupted: str = "interrupted", on_error=None) -> int:
    """Run `action() -> exit code` the way every suite command ends: SIGTERM acts like Ctrl-C, a SuiteError is one
    line on stderr and its exit code (after `on_error(exc)`), an interrupt exits 130 (later interrupts are
    absorbed), anything else is an internal failure (exit 3) with the traceback only on --debug."""
    _interrupts.install()
    try:
        try:
            return action()
        except KeyboardInterrupt:
            _interrupts.count = max(_interrupts.count, 1)  # from here on, every further signal is absorbed
            raise
    except SuiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if on_error is not None:
            on_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug or an unexpected runtime failure: one line, traceback on request
        if debug:
            traceback.print_exc()
        print(
            f"error: internal failure: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_RUNTIME


def exit_now(code: int):
    """End the process with `code`. After an interrupt the exit skips the interpreter's tear-down: runtime
    threads may still be busy (an inference session being created, a request in flight), and joining or
    destroying them could hang (the session creation runs to its end) or abort (exit 134). Everything that
    must survive (resume chunks) is on disk by then; the decoding workers die with the process."""
    if _interrupts.count:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


# what an interrupt leaves: only an accuracy run keeps anything to resume from
INTERRUPTED = {
    "accuracy": "interrupted: no record was written; the run resumes from its finished batches when the same "
    "command is run again",
    "performance": "interrupted: no record was written; a performance run keeps nothing: rerun it to measure again",
    "loadgen": "interrupted: no record and no LoadGen logs were written: rerun it to measure again",
}


def main(argv=None) -> int:
    """Run the `suite` command `argv` names; returns its exit code (common/errors.py), a SuiteError reported as one
    line."""
    args = build_parser().parse_args(argv)  # argparse exits with 2 on bad flags, as documented
    if args.command == "env":
        return print_env(args.json)
    if args.command in ("runs", "diff"):
        from common.record import listing

        return guarded(
            lambda: (
                listing.print_runs(args.results_dir, args.last)
                if args.command == "runs"
                else listing.print_diff(args.a, args.b, args.results_dir)
            )
        )
    if args.command == "merge":
        return guarded(lambda: merge(args), args.debug)

    def run() -> int:
        cfg = config_from_args(args)  # a bad environment value is a ConfigError: exit 2 naming the variable
        written = {}

        def publish(record):  # before an accuracy run drops its resume state
            try:
                written["path"] = write_record(cfg.results_dir, record)
            except SuiteError:
                print_summary(record)  # the metrics are not lost with the record
                raise

        if args.command == "loadgen":
            from common.harness.loadgen_run import run_loadgen
            from common.loadgen.settings import loadgen_config_from_args

            record = run_loadgen(cfg, loadgen_config_from_args(args), None if args.no_record else publish)
        else:
            runner = run_accuracy if args.command == "accuracy" else run_performance
            if args.command == "accuracy" and cfg.devices:
                from common.harness.devices import run_on_devices

                runner = run_on_devices
            record = runner(cfg, None if args.no_record else publish)
        print_summary(record, written.get("path"))
        html = html_path(args.html, written.get("path"))
        if html:
            from common.report.html import run_page, write_html

            print(f" HTML report: {write_html(html, run_page(record))}")
        return exit_code_of(record["verdict"])

    return guarded(run, args.debug, INTERRUPTED[args.command])


def merge(args) -> int:
    """scripts/suite merge: exit 0/1 as an accuracy run, 2 a duplicated or disagreeing shard (or bad input),
    4 a missing shard (named)."""
    from common.harness.merge import merge_shards

    record = merge_shards(args.dirs, args.annotation, args.evaluator, args.detections_out)
    path = None
    if not args.no_record:
        try:
            path = write_record(args.results_dir, record)
        except SuiteError:
            print_summary(record)
            raise
    print_summary(record, path)
    return exit_code_of(record["verdict"])


if __name__ == "__main__":
    exit_now(main())
