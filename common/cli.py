"""Command line of the suite: the commands the bash scripts call.

    python -m common.cli accuracy    --model rtmdet --precision fp16 --bs 1 [...]
    python -m common.cli performance --model rtmdet --precision fp16 --bs 32 [...]

Exit codes: 0 every target held, 1 a target or an output check failed, 2 bad input or configuration,
3 the runtime failed, 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback

from .errors import EXIT_INTERRUPTED, EXIT_RUNTIME, SuiteError
from .evaluate import ENGINES, format_stats
from .results import exit_code_of, write_record
from .runs import RunConfig, run_accuracy, run_performance
from .specs import PRECISIONS


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _common_args(p: argparse.ArgumentParser):
    env = os.environ.get
    p.add_argument("--model", required=True, help="model folder name under models/ or a model.yaml path")
    p.add_argument("--variant", default=env("MODEL_VARIANT"), help="variant in the model's spec (default: its first)")
    p.add_argument("--precision", choices=PRECISIONS, default=env("PRECISION", "fp32"))
    p.add_argument("--bs", "--batch-size", dest="batch_size", type=_positive_int, default=1)
    p.add_argument("--backend", default=env("BACKEND", "onnxruntime"))
    p.add_argument("--device", default=env("DEVICE"), help="backend device (onnxruntime: cpu, cuda, tensorrt)")
    p.add_argument("--onnx", default=None, help="ONNX model (default: $ONNX_MODEL, then the spec's)")
    p.add_argument("--checkpoint", default=env("CHECKPOINT"),
                   help="without --onnx: export this checkpoint with the model's export.py first (cached; "
                        "default: $CHECKPOINT)")
    p.add_argument("--config", default=env("MODEL_CONFIG"), help="the checkpoint's model config (default: $MODEL_CONFIG)")
    p.add_argument("--opset", type=_positive_int, default=None, help="ONNX opset of a checkpoint export")
    p.add_argument("--dataset-dir", default=env("DATASETS_DIR"),
                   help="COCO dir with images/val2017 (or val2017) and annotations/ (default: $DATASETS_DIR)")
    p.add_argument("--ann", "--annotation", dest="annotation", default=env("COCO_ANNOTATION"),
                   help="annotation file: a name under <dataset>/annotations or a path (default: the spec's)")
    p.add_argument("--images-dir", default=env("COCO_IMAGES_DIR"), help="images dir, overriding the layout")
    p.add_argument("--results-dir", default=env("RESULTS_DIR", "results"))
    p.add_argument("--cache-dir", default=env("ENGINE_CACHE_DIR"), help="engine cache (default: <repo>/.cache/engines)")
    p.add_argument("--threads", type=_nonneg_int, default=int(env("SUITE_THREADS", "0") or 0),
                   help="runtime threads (0 = runtime default)")
    p.add_argument("--calib-dir", default=env("CALIB_DIR"),
                   help="int8: calibration images, never the evaluation images (refused when they are; "
                        "default: $CALIB_DIR)")
    p.add_argument("--calib-images", type=_positive_int, help="int8: calibration images used (default: the spec's int8 calib_images, else 32)")
    p.add_argument("--no-record", action="store_true", help="print only; write no result record")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="suite", description="Inference validation suite")
    sub = parser.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy", help="COCO accuracy run")
    _common_args(acc)
    acc.add_argument("--max-images", type=_positive_int, default=None, help="evaluate only the first N images")
    acc.add_argument("--workers", type=_nonneg_int, default=None,
                     help="decoding worker processes (0 = in-process: each stream decodes its own next batch; "
                          "default: the cores the runtime leaves free, up to 4)")
    acc.add_argument("--streams", type=_positive_int, default=int(os.environ.get("SUITE_STREAMS", "0") or 0) or None,
                     help="inference requests in flight, each at --bs (default: 2 on a CPU with >= 2 cores, else 1)")
    acc.add_argument("--evaluator", choices=ENGINES, default=None,
                     help="COCO metrics engine (default: faster-coco-eval when installed; same 12 stats)")
    acc.add_argument("--record-outputs", metavar="DIR", help="also record the raw outputs for the replay backend")
    acc.add_argument("--replay-dir", metavar="DIR", help="replay backend: the recording to serve")
    acc.add_argument("--input-cache", metavar="DIR", default=os.environ.get("INPUT_CACHE_DIR"),
                     help="reuse decoded + preprocessed inputs stored here (default: $INPUT_CACHE_DIR; off)")
    acc.add_argument("--save-detections", metavar="PATH", help="also write the detections as COCO results JSON")
    acc.add_argument("--preflight", type=_nonneg_int, default=int(os.environ.get("SUITE_PREFLIGHT", "4") or 0),
                     metavar="N", help="before the full pass, compare the engine with the FP32 reference on N images "
                     "and stop (exit 1) when out of tolerance; 0 = off (default 4, $SUITE_PREFLIGHT)")
    acc.add_argument("--no-progress", action="store_true")
    acc.add_argument("--checkpoint-interval", type=float, default=float(os.environ.get("SUITE_CHECKPOINT_S", "1") or 1),
                     metavar="S", help="save finished predictions for resuming every S seconds (0 = after every "
                                       "batch; default: $SUITE_CHECKPOINT_S, else 1)")
    acc.add_argument("--no-resume", action="store_true",
                     help="ignore the predictions an interrupted identical run left in <results-dir>/.run-state")
    perf = sub.add_parser("performance", help="throughput / latency run")
    _common_args(perf)
    perf.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds")
    perf.add_argument("--min-duration", type=float, default=5.0, help="minimum measured seconds")
    perf.add_argument("--min-iters", type=_positive_int, default=100, help="minimum measured iterations")
    return parser


def _config(args) -> RunConfig:
    cfg = RunConfig(model=args.model, variant=args.variant, precision=args.precision, batch_size=args.batch_size,
                    backend=args.backend, device=args.device, onnx=args.onnx, dataset_dir=args.dataset_dir,
                    annotation=args.annotation, images_dir=args.images_dir, results_dir=args.results_dir,
                    threads=args.threads, checkpoint=args.checkpoint, config=args.config, opset=args.opset,
                    calib_dir=args.calib_dir, calib_images=args.calib_images)
    if args.cache_dir:
        cfg.cache_dir = args.cache_dir
    if args.command == "accuracy":
        cfg.max_images, cfg.progress = args.max_images, not args.no_progress
        cfg.detections_out, cfg.evaluator = args.save_detections, args.evaluator
        cfg.record_outputs, cfg.input_cache = args.record_outputs, args.input_cache
        if args.replay_dir:
            cfg.backend_options["replay_dir"] = args.replay_dir
        cores = os.cpu_count() or 1
        cpu = args.backend == "onnxruntime" and (args.device or "cpu") == "cpu"
        cfg.streams = args.streams or (2 if cpu and cores >= 2 else 1)
        # A CPU runtime already keeps every core busy (measured on 2 cores: decoding in-process beside
        # two 1-thread sessions beat a separate decoding process); an accelerator leaves the host cores free.
        cfg.workers = args.workers if args.workers is not None else (
            max(0, min(4, cores - 2 * cfg.streams)) if cpu else max(1, min(4, cores - 1)))
        cfg.resume = not args.no_resume
        cfg.checkpoint_s = args.checkpoint_interval
        cfg.preflight = args.preflight
    else:
        cfg.warmup_s, cfg.min_duration_s, cfg.min_iters = args.warmup, args.min_duration, args.min_iters
    return cfg


def print_summary(record: dict, path=None):
    head = (f"== {record['model']}/{record['variant']} | {record['backend']} {record['device']} "
            f"{record['precision']} | batch {record['batch_size']} | {record['kind']} ==")
    print(head)
    if record["kind"] == "accuracy":
        m, d = record["metrics"], record["dataset"]
        print(f" dataset: {d['num_images']} images, categories {d['categories']}, {d['annotation']}")
        print(format_stats(m))
        print(f" mAP@0.5:0.95 = {m['AP']:.4f}   mAP@0.5 = {m['AP50']:.4f}")
        r = record["run"]
        print(f" run: {r['wall_s']:.1f} s wall, {r['images_per_s']:.1f} images/s")
    else:
        from .telemetry import format_telemetry
        from .timing import TimingStats, format_timing
        print(f" input: {record['input']}")
        print(format_timing(TimingStats(**record["timing"])))
        if "compute" in record:
            c, e = record["compute"], record["end_to_end"]
            print(f" compute     {c['mean_ms']:.3f} ms mean per batch, {c['fps']:.2f} FPS compute-only = fps_compute "
                  f"({c['method']})")
            print(" end-to-end  " + (f"{e['stats']['mean_ms']:.3f} ms mean per batch, {e['stats']['fps']:.2f} FPS = "
                                      f"fps_e2e (read + preprocess + infer + decode, {e['images']} images)"
                                      if e["stats"]
                                      else f"not measured: {e['reason']}"))
            print(format_telemetry(record["telemetry"]))
    for c in record["checks"]:
        if c["status"] == "not_applicable":
            continue
        op = ">=" if c["bound"] == "min" else "<="
        print(f" target {c['metric']} {op} {c['limit']:g}: {c['value']:.4f} {c['status'].upper()}")
    if record["verdict"] == "unchecked":
        print(" no target applies to this backend/device/precision/batch: nothing was checked")
    for reason in record["reasons"]:
        print(f" FAIL: {reason}")
    print(f" verdict: {record['verdict'].upper()}" + (f"   record: {path}" if path else ""))


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def guarded(action, debug: bool = False, interrupted: str = "interrupted", on_error=None) -> int:
    """Run `action() -> exit code` the way every suite command ends: SIGTERM acts like Ctrl-C, a SuiteError is one
    line on stderr and its exit code (after `on_error(exc)`), an interrupt exits 130, anything else is an internal
    failure (exit 3) with the traceback only on --debug."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return action()
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
        print(f"error: internal failure: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_RUNTIME


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)  # argparse exits with 2 on bad flags, as documented

    def run() -> int:
        cfg = _config(args)
        record = run_accuracy(cfg) if args.command == "accuracy" else run_performance(cfg)
        path = None if args.no_record else write_record(cfg.results_dir, record)
        print_summary(record, path)
        return exit_code_of(record["verdict"])

    return guarded(run, args.debug, "interrupted: no record was written; an accuracy run resumes from its finished "
                                    "batches when the same command is run again")


if __name__ == "__main__":
    sys.exit(main())
