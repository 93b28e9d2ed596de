"""The two drivers: an accuracy run and a performance run. Both share everything up to the runner.

accuracy:    spec + dataset -> loader -> runner.infer -> decode -> evaluate -> record -> check -> exit code
performance: spec -> engine (cached) -> runner timed -> stats -> record -> check -> exit code
"""
from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
import dataclasses
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

from . import REPO_ROOT
from .backends import get_backend
from .backends.base import BuildRequest, Runner
from .data import BatchLoader, image_items, read_annotations, read_image, resolve_dataset
from .decode import get_decoder, nonfinite_counts
from .endtoend import E2E_IMAGES, compute_time, measure_end_to_end
from .engine_cache import EngineCache, atomic_write_bytes, file_sha256
from .errors import ConfigError, InputError, RuntimeFailure
from .evaluate import CocoEvaluator, to_coco_results
from .preprocess import Preprocessor
from .replay import OutputRecorder
from .run_state import RunState
from .results import check_targets, new_record, verdict_of
from .specs import Variant, load_model
from .telemetry import Sampler
from .timing import measure


@dataclass
class RunConfig:
    model: str
    variant: str | None = None
    precision: str = "fp32"
    batch_size: int = 1
    backend: str = "onnxruntime"
    device: str | None = None
    onnx: str | None = None
    checkpoint: str | None = None      # with `config`: export to ONNX first (cached, common/exporting.py)
    config: str | None = None
    opset: int | None = None
    dataset_dir: str | None = None
    annotation: str | None = None
    images_dir: str | None = None
    max_images: int | None = None
    results_dir: str = "results"
    detections_out: str | None = None
    evaluator: str | None = None
    record_outputs: str | None = None
    input_cache: str | None = None
    cache_dir: str = str(REPO_ROOT / ".cache" / "engines")
    workers: int = 1
    streams: int = 1
    threads: int = 0
    progress: bool = True
    warmup_s: float = 1.0
    min_duration_s: float = 5.0
    min_iters: int = 100
    backend_options: dict = field(default_factory=dict)
    calib_dir: str | None = None       # int8: calibration images (never the evaluation set, common/calibration.py)
    calib_images: int | None = None   # None: the spec's int8 calib_images (common/quantize.py), else 32
    resume: bool = True  # pick up the per-batch predictions an interrupted identical run left behind
    checkpoint_s: float = 1.0  # how often finished predictions are saved for resuming (0 = after every batch)
    preflight: int = 0   # accuracy: compare with the FP32 reference on this many images first (common/fidelity.py)


@dataclass
class Prepared:
    variant: Variant
    onnx_path: Path
    onnx_sha256: str
    backend: object
    request: BuildRequest
    engine: Path
    cache_hit: bool
    runner: Runner


def resolve_onnx(cfg: RunConfig, variant: Variant) -> Path:
    """The ONNX to run: --onnx / $ONNX_MODEL, else one exported (once, cached) from --checkpoint [+ --config],
    else the spec's."""
    value = cfg.onnx or os.environ.get("ONNX_MODEL")
    if not value and cfg.checkpoint:
        from .exporting import DEFAULT_OPSET, export_cached
        return export_cached(variant, cfg.checkpoint, cfg.config, Path(cfg.cache_dir) / "exports",
                             cfg.opset or variant.extra.get("export", {}).get("opset", DEFAULT_OPSET))
    value = value or variant.onnx
    if not value:
        raise ConfigError(f"no ONNX model for {variant.id}: pass --onnx or set ONNX_MODEL, "
                          "or --checkpoint [--config] to export one")
    path = Path(os.path.expandvars(value))
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    if not path.is_file():
        raise InputError("ONNX model not found", path)
    return path


def build_request(cfg: RunConfig, variant: Variant, onnx_path: Path, onnx_sha256: str) -> BuildRequest:
    """What an engine is built from (scripts/build_engine.py builds the same request as a run)."""
    options = dict(variant.extra.get("build", {}))
    options["preprocess_key"] = variant.preprocess.key(variant.height, variant.width)
    if cfg.precision == "int8":  # only INT8 calibrates; $CALIB_DIR must not affect others
        from .quantize import settings_for
        options["int8"] = settings_for(variant, cfg.calib_images)
        if cfg.calib_dir:
            from .calibration import CalibrationSet
            options["calibration"] = CalibrationSet.for_variant(
                cfg.calib_dir, variant, dataclasses.replace(cfg, calib_images=options["int8"].calib_images))
    return BuildRequest(onnx_path=onnx_path, onnx_sha256=onnx_sha256, precision=cfg.precision,
                        batch_size=cfg.batch_size, input_name=variant.input_name,
                        input_shape=(3, variant.height, variant.width), cache=EngineCache(cfg.cache_dir),
                        options=options, extra_inputs=tuple(variant.extra_inputs.items()))


def prepare(cfg: RunConfig, variant: Variant | None = None, onnx_sha256: str | None = None,
            onnx_path: Path | None = None) -> Prepared:
    """Spec, backend, engine (built or taken from the cache) and a loaded runner."""
    if cfg.batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {cfg.batch_size}")
    variant = variant or load_model(cfg.model).variant(cfg.variant)
    onnx_path = onnx_path or resolve_onnx(cfg, variant)
    threads = cfg.threads or (max(1, (os.cpu_count() or 1) // cfg.streams) if cfg.streams > 1 else 0)
    backend = get_backend(cfg.backend, cfg.device, threads=threads, **cfg.backend_options)
    digest = onnx_sha256 or file_sha256(onnx_path)
    req = build_request(cfg, variant, onnx_path, digest)
    engine, hit = backend.build(req)
    runner = backend.load(engine, req)
    return Prepared(variant, onnx_path, digest, backend, req, engine, hit, runner)


def _infer(runner: Runner, x: np.ndarray, image_ids=None) -> dict:
    try:
        return runner.infer(x, image_ids=image_ids)
    except Exception as exc:  # the runtimes raise their own exception types
        if isinstance(exc, (InputError, RuntimeFailure)):
            raise
        raise RuntimeFailure(f"inference failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc


def _base_fields(cfg: RunConfig, p: Prepared) -> dict:
    return {"model": p.variant.model, "variant": p.variant.name, "backend": p.backend.name,
            "device": p.backend.device(), "precision": cfg.precision, "batch_size": cfg.batch_size,
            "onnx": {"path": str(p.onnx_path), "sha256": p.onnx_sha256},
            "engine": {"path": str(p.engine), "cache_hit": p.cache_hit, "runtime": p.backend.runtime_version()}}


def _targets(p: Prepared, cfg: RunConfig):
    return p.variant.targets_for(p.backend.name, p.backend.device(), cfg.precision, cfg.batch_size)


def _target_dicts(targets) -> list:
    return [{"backend": t.backend, "device": t.device, "precision": list(t.precisions),
             "batch_size": None if t.batch_sizes is None else list(t.batch_sizes),
             "min": t.minimum, "max": t.maximum} for t in targets]


def _finish(record: dict, values: dict, targets, extra_reasons: list[str]) -> dict:
    checks, reasons = check_targets(values, targets)
    reasons = extra_reasons + reasons
    record.update(targets=_target_dicts(targets), checks=checks, verdict=verdict_of(checks, reasons),
                  reasons=reasons)
    return record


def _read_environment():
    """Package versions and git state for the record (cached), imported and read off the start-up path:
    importlib.metadata and the git calls cost ~55 ms that a thread fills while the images run."""
    from .envinfo import environment
    environment()


def needs_preflight(cfg: RunConfig) -> bool:
    """Only a candidate that is not the reference itself (and not a replay of stored outputs)."""
    return bool(cfg.preflight) and cfg.backend != "replay" and not (
        cfg.backend == "onnxruntime" and (cfg.device or "cpu") == "cpu" and cfg.precision == "fp32")


READ_AHEAD_IMAGES = 64


def _read_ahead(batches, future, limit: int) -> list:
    """Decode batches until `future` is done (or `limit` batches wait)."""
    ahead = []
    while not future.done() and len(ahead) < limit:
        batch = next(batches, None)
        if batch is None:
            break
        ahead.append(batch)
    return ahead


def _in_streams(batches, runners: list, infer):
    """(batch, infer(runner, batch)) for every batch, in order, with one thread per runner.

    Each stream thread takes the next batch itself, so when the loader decodes in-process the decoding runs in
    that stream's thread: each stream alternates between decoding and inference and there is one busy thread per
    stream, rather than a separate decoding thread competing with every stream for the cores (measured on 2
    cores: 6.05 s instead of 6.31 s for the loop over 350 images). A failure, in decoding or in inference, is
    raised once every batch before it has been yielded, so the caller keeps all of them.
    """
    lock = threading.Lock()
    results: queue.Queue = queue.Queue()
    stop = threading.Event()
    taken = 0

    def stream(runner):
        nonlocal taken
        while not stop.is_set():
            with lock:
                seq, taken = taken, taken + 1
                try:
                    batch = next(batches, None)
                except BaseException as exc:  # noqa: BLE001 - raised in order by the consuming thread
                    results.put((seq, None, exc))
                    break
            if batch is None:
                break
            try:
                results.put((seq, batch, infer(runner, batch)))
            except BaseException as exc:  # noqa: BLE001 - as above
                results.put((seq, None, exc))
                break
        results.put(None)

    threads = [threading.Thread(target=stream, args=(r,), daemon=True) for r in runners]
    for t in threads:
        t.start()
    done, nxt, running = {}, 0, len(threads)
    try:
        while True:
            while nxt in done:
                batch, result = done.pop(nxt)
                nxt += 1
                if batch is None:
                    raise result
                yield batch, result
            if not running:
                return
            item = results.get()
            if item is None:
                running -= 1
            else:
                done[item[0]] = item[1:]
    finally:
        stop.set()
        for t in threads:
            t.join()


def run_accuracy(cfg: RunConfig) -> dict:
    t_start = time.perf_counter()
    variant = load_model(cfg.model).variant(cfg.variant)
    images_dir, ann_file = resolve_dataset(cfg.dataset_dir, cfg.annotation or variant.annotation, cfg.images_dir)
    annotations = read_annotations(ann_file)
    items = image_items(annotations, images_dir, cfg.max_images)
    evaluator = CocoEvaluator(annotations, variant.label_map, variant.categories, cfg.evaluator)
    decoder = get_decoder(variant.output)
    decode_cfg = variant.decode_cfg
    pre = Preprocessor(variant.preprocess, variant.height, variant.width)
    onnx_path = resolve_onnx(cfg, variant)
    onnx_sha256 = file_sha256(onnx_path)
    state = RunState(Path(cfg.results_dir) / ".run-state", onnx_sha256, cfg.checkpoint_s, spec=repr(variant),
                     precision=cfg.precision,
                     batch_size=cfg.batch_size, backend=cfg.backend, device=cfg.device or "",
                     annotation=file_sha256(ann_file), images_dir=str(images_dir.resolve()), n=len(items))
    # A recording of raw outputs must cover every image, so it always starts from the first one.
    done, chunks = state.load() if cfg.resume and not cfg.record_outputs else (0, [])
    nonfinite: Counter = Counter()
    for c in chunks:
        evaluator.add(c["image_ids"], c["boxes"], c["scores"], c["labels"])
        nonfinite.update(c["nonfinite"])
    # The loader forks its workers before prepare() starts the runtime's threads.
    with BatchLoader(items[done:], pre, cfg.batch_size, cfg.workers, cfg.progress, desc=variant.id,
                     cache_dir=None if done else cfg.input_cache) as loader:
        batches = iter(loader)
        # The engine is built / loaded while the first images decode: a cold start would otherwise leave the
        # decoding core idle for as long as a session set-up (or an engine build) takes.
        setup = ThreadPoolExecutor(1)
        future = setup.submit(prepare, cfg, variant, onnx_sha256, onnx_path)
        ahead = _read_ahead(batches, future, max(1, READ_AHEAD_IMAGES // cfg.batch_size))
        p = future.result()
        setup.submit(_read_environment)
        setup.shutdown(wait=False)
        if needs_preflight(cfg):  # a broken engine fails here in seconds, not after the full pass
            from .fidelity import preflight  # only here: the reference run's own imports cost every run ~20 ms
            preflight(cfg, p, items, annotations)
        recorder = OutputRecorder(cfg.record_outputs, p.onnx_sha256, p.request.options["preprocess_key"]) \
            if cfg.record_outputs else None
        # `streams` runners each take one batch at a time (same batch size as asked), so several requests are in
        # flight at once while the next images decode: the device, not the harness, sets the pace.
        runners = [p.runner] * cfg.streams if p.runner.concurrent else \
            [p.runner] + [p.backend.load(p.engine, p.request) for _ in range(cfg.streams - 1)]
        infer_s = 0.0
        start = done

        def timed_infer(runner, batch):
            t0 = time.perf_counter()
            out = _infer(runner, batch.inputs, batch.image_ids)
            return out, time.perf_counter() - t0

        def consume(batch, outputs, seconds):
            nonlocal infer_s, start
            infer_s += seconds
            if recorder is not None:
                recorder.add(batch.image_ids, outputs)
            counts = nonfinite_counts(outputs)
            nonfinite.update(counts)
            bi, boxes, scores, labels = decoder(outputs, batch.meta, decode_cfg)
            finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
            ids = batch.image_ids[bi[finite]]
            evaluator.add(ids, boxes[finite], scores[finite], labels[finite])
            state.save(start, len(batch.image_ids), ids, boxes[finite], scores[finite], labels[finite], counts)
            start += len(batch.image_ids)

        try:
            for batch, (outputs, seconds) in _in_streams(chain(ahead, batches), runners, timed_infer):
                consume(batch, outputs, seconds)
        except BaseException:
            state.flush()  # every batch consumed so far is complete: keep it for the resumed run
            raise
        if recorder is not None:
            recorder.write()
    image_ids = [it.image_id for it in items]
    t_eval = time.perf_counter()
    metrics = evaluator.evaluate(image_ids)
    evaluate_s = time.perf_counter() - t_eval
    if cfg.detections_out:
        atomic_write_bytes(cfg.detections_out, json.dumps(to_coco_results(evaluator.store.rows())).encode())
    wall = time.perf_counter() - t_start
    reasons = [f"output '{name}' has {n} NaN/Inf values" for name, n in sorted(nonfinite.items())]
    record = new_record("accuracy", **_base_fields(cfg, p),
                        dataset={"images_dir": str(images_dir), "annotation": str(ann_file),
                                 "num_images": len(items), "categories": evaluator.categories,
                                 "evaluator": evaluator.engine, "input_cache_hit": loader.cached is not None},
                        metrics=metrics, num_detections=len(evaluator.store), detections_file=cfg.detections_out,
                        run={"wall_s": wall, "inference_s": infer_s, "evaluate_s": evaluate_s,
                             "images_per_s": len(items) / wall,
                             "workers": cfg.workers, "streams": cfg.streams, "resumed_images": done})
    record = _finish(record, metrics, _targets(p, cfg), reasons)
    state.clear()  # the record now holds everything; a rerun should measure afresh
    return record


def dataset_sample(cfg: RunConfig, variant: Variant, n: int) -> tuple[list | None, str]:
    """(the first n images of the configured dataset, its annotation file name), or (None, why there are none)."""
    try:
        images_dir, ann_file = resolve_dataset(cfg.dataset_dir, cfg.annotation or variant.annotation, cfg.images_dir)
    except ConfigError as exc:
        return None, f"no dataset configured ({exc})"
    return image_items(read_annotations(ann_file), images_dir, n), ann_file.name


def timing_inputs(cfg: RunConfig, variant: Variant, sample: tuple | None = None) -> tuple[np.ndarray, str]:
    """Real preprocessed images when a dataset is at hand (post-processing inside a graph depends on the
    content), else seeded random data. `sample`: dataset_sample()'s answer, when the caller has it already."""
    pre = Preprocessor(variant.preprocess, variant.height, variant.width)
    x = np.empty((cfg.batch_size, 3, variant.height, variant.width), np.float32)
    items, source = sample or dataset_sample(cfg, variant, cfg.batch_size)
    if items is None:
        x[:] = np.random.default_rng(0).standard_normal(x.shape, np.float32)
        return x, "random"
    for i in range(cfg.batch_size):
        x[i] = pre(read_image(items[i % len(items)].path))[0]
    return x, f"{min(len(items), cfg.batch_size)} image(s) from {source}"


FPS_DEFINITIONS = {
    "fps": "harness: batch / mean time of runner.infer (padding, host/device copies, sync), the `timing` section",
    "fps_compute": "compute only: batch * 1000 / mean ms of the engine alone (IGIE/TVM time_evaluator('run'), "
                   "ONNX Runtime the session run), the `compute` section; what published MR-V100 figures are",
    "fps_e2e": "end to end: JPEG read + decode, preprocessing, inference and output decoding, the `end_to_end` "
               "section",
}


def run_performance(cfg: RunConfig) -> dict:
    p = prepare(cfg)
    sample = dataset_sample(cfg, p.variant, max(cfg.batch_size, E2E_IMAGES))  # one read for both timings
    x, source = timing_inputs(cfg, p.variant, sample)
    last: dict = {}

    def step():
        last["out"] = _infer(p.runner, x)

    with Sampler(p.backend.name, p.backend.device(), gpu_index=getattr(p.runner, "device_index", None)) as sampler:  # device memory / power while timing
        stats = measure(step, p.runner.sync, cfg.batch_size, warmup_s=cfg.warmup_s, min_iters=cfg.min_iters,
                        min_duration_s=cfg.min_duration_s)
    # A speed figure is only worth something if the engine computes numbers: check the outputs it timed.
    reasons = [f"output '{name}' has {n} NaN/Inf values" for name, n in nonfinite_counts(last["out"]).items()]
    values = {"fps": stats.fps, "latency_mean_ms": stats.mean_ms, "latency_p50_ms": stats.p50_ms,
              "latency_p90_ms": stats.p90_ms, "latency_p99_ms": stats.p99_ms}
    items = sample[0][:E2E_IMAGES] if sample[0] else None
    e2e = {"stats": measure_end_to_end(p.runner, p.variant, items, cfg.batch_size, cfg.warmup_s,
                                       cfg.min_duration_s).as_dict(), "images": len(items), "reason": None} \
        if items else {"stats": None, "images": 0, "reason": f"{sample[1]}: end-to-end time needs real images"}
    compute = compute_time(p.runner, x, stats)
    # Three FPS, each under its own name (targets name the one they mean; docs/engines.md "FPS definitions"):
    # a published MR-V100 figure is compute-only (batch * 1000 / mean time_evaluator ms): compare it with
    # fps_compute, never with fps (harness) or fps_e2e (with JPEG decoding and pre/post-processing)
    values["fps_compute"] = compute.get("fps")
    values["fps_e2e"] = e2e["stats"]["fps"] if e2e.get("stats") else None
    record = new_record("performance", **_base_fields(cfg, p), input=source, timing=stats.as_dict(),
                        compute=compute, end_to_end=e2e, fps_definitions=FPS_DEFINITIONS,
                        telemetry=sampler.summary(stats.fps), metrics=values)
    return _finish(record, values, _targets(p, cfg), reasons)
