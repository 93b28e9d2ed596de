"""The two drivers: an accuracy run and a performance run. Both share everything up to the runner.

accuracy:    spec + dataset -> loader -> runner.infer -> decode -> evaluate -> record -> check -> exit code
performance: spec -> engine (cached) -> runner timed -> stats -> record -> check -> exit code
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import queue
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from itertools import chain
from pathlib import Path

import numpy as np

from common.compare.timed_outputs import from_timing_sample
from common.config.options import RunConfig, parallelism  # noqa: F401  RunConfig: re-exported for callers of the drivers
from common.config.specs import Variant, load_model
from common.data.coco import (
    folder_items,
    image_items,
    read_annotations,
    read_image,
    resolve_dataset,
    resolve_images_dir,
)
from common.data.loader import open_loader
from common.data.preprocess import Preprocessor
from common.decode.outputs import fault_reasons, get_decoder, nonfinite_counts, output_faults
from common.engine_cache import EngineCache, atomic_write_bytes, file_sha256_memo
from common.errors import ConfigError, InputError, RuntimeFailure, first_line
from common.evaluate.detail import accuracy_detail
from common.evaluate.detections_file import DetectionsFile
from common.evaluate.metrics import CocoEvaluator, category_coverage, to_coco_results
from common.fsaccess import check_output_file, ensure_writable_dir
from common.harness.endtoend import E2E_IMAGES, compute_time, measure_end_to_end
from common.harness.engine import Prepared, infer, prepare, resolve_onnx, sha256_memo_dir
from common.harness.requests import engine_request, request_key
from common.harness.run_state import RunState
from common.harness.shards import SHARD_KIND, ShardPlan, engine_key, ids_digest, write_shard
from common.harness.timing import console_progress, measure, validity_reasons
from common.harness.upfront import check_before_images
from common.metric_table import FPS_DEFINITIONS  # noqa: F401  the three FPS of a performance record
from common.record.results import check_targets, new_record, verdict_of
from common.runtime.backends import backend_class
from common.runtime.replay import OutputRecorder
from common.runtime.telemetry import Sampler


def _base_fields(p: Prepared) -> dict:
    return {
        "model": p.variant.model,
        "variant": p.variant.name,
        "backend": p.backend.name,
        "device": p.backend.device(),
        "precision": p.asked.precision,
        "batch_size": p.asked.batch_size,
        "onnx": {"path": str(p.onnx_path), "sha256": p.onnx_sha256},
        "engine": {"path": str(p.engine), "cache_hit": p.cache_hit, "runtime": p.backend.runtime_version()},
        # what the images were fed with, resolved (defaults included): a wrong channel order or mean moves
        # the AP by points and is otherwise invisible to a later reader of the record
        "spec": {"path": p.variant.source, "sha256": p.variant.source_sha256 or None, "variant": p.variant.name},
        "preprocess": {
            "height": p.variant.height,
            "width": p.variant.width,
            **dataclasses.asdict(p.variant.preprocess),
        },
    }


def _targets(p: Prepared):
    return p.variant.targets_for(p.backend.name, p.backend.device(), p.asked.precision, p.asked.batch_size)


def _target_dicts(targets) -> list:
    return [
        {
            "backend": t.backend,
            "device": t.device,
            "precision": list(t.precisions),
            "batch_size": None if t.batch_sizes is None else list(t.batch_sizes),
            "min": t.minimum,
            "max": t.maximum,
            "min_images": t.min_images,
        }
        for t in targets
    ]


def _note_unjudged_targets(variant: Variant, cfg: RunConfig, n_images: int) -> None:
    """Said before any image is read: targets declared for more images than this run evaluates (a published
    full-val2017 figure on a subset) will be reported "not judged", neither passed nor failed."""
    short = sorted(
        {
            t.min_images
            for t in variant.targets
            if t.min_images and n_images < t.min_images and cfg.precision in t.precisions
        }
    )
    if short:
        print(
            f"note: {n_images} images < {short[-1]}, the minimum the {variant.id} targets are declared for: they "
            "will be reported not judged (run the full set to judge them)",
            file=sys.stderr,
        )


def _finish(record: dict, values: dict, targets, extra_reasons: list[str]) -> dict:
    checks, reasons = check_targets(values, targets, (record.get("dataset") or {}).get("num_images"))
    reasons = extra_reasons + reasons
    record.update(targets=_target_dicts(targets), checks=checks, verdict=verdict_of(checks, reasons), reasons=reasons)
    return record


finish_record = _finish  # the merge of image shards judges its merged record the same way (harness/merge.py)


def _read_environment():
    """Package versions and git state for the record (cached), imported and read off the start-up path:
    importlib.metadata and the git calls cost ~55 ms that a thread fills while the images run."""
    from common.record.envinfo import environment

    environment()


def needs_preflight(cfg: RunConfig, backend) -> bool:
    """Only a candidate that is not the reference itself (and not a replay of stored outputs)."""
    return bool(cfg.preflight) and not backend.capabilities.replays and not backend.is_reference(cfg.precision)


READ_AHEAD_IMAGES = 64


def _read_ahead(batches, future, limit: int) -> list:
    """Decode batches until `future` is done (or `limit` batches wait)."""
    ahead: list = []
    while not future.done() and len(ahead) < limit:
        batch = next(batches, None)
        if batch is None:
            break
        ahead.append(batch)
    return ahead


def _drain(batches: list):
    """The list's batches in order, each dropped from the list as it is taken (a loader may reuse its buffer once
    the consumer is done with it)."""
    batches.reverse()
    while batches:
        yield batches.pop()


def _in_streams(batches, runners: list, infer, ahead: int | None = None):
    """(batch, infer(runner, batch)) for every batch, in order, with one thread per runner.

    Each stream thread takes the next batch itself, so when the loader decodes in-process the decoding runs in
    that stream's thread: each stream alternates between decoding and inference and there is one busy thread per
    stream, rather than a separate decoding thread competing with every stream for the cores (measured on 2
    cores: 6.05 s instead of 6.31 s for the loop over 350 images). A failure, in decoding or in inference, is
    raised once every batch before it has been yielded, so the caller keeps all of them.

    At most `ahead` batches (default two per stream) are taken but not yet handed to the consumer: a stream
    waits for a free slot before taking the next batch, so raw outputs never pile up when the device (or the
    input cache) is faster than the consumer, and a consumer that stops early stops the streams within that
    bound whatever the scheduling.
    """
    ahead = max(len(runners), ahead or 2 * len(runners))
    lock = threading.Lock()
    results: queue.Queue = queue.Queue()
    slots = threading.Semaphore(ahead)
    stop = threading.Event()
    taken = 0

    def stream(runner):
        nonlocal taken
        while True:
            slots.acquire()
            if stop.is_set():
                break
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
            # not kept while waiting for a slot: a loader reuses a batch's buffer only once no reference is left
            batch = None
        results.put(None)

    threads = [threading.Thread(target=stream, args=(r,), daemon=True) for r in runners]
    for t in threads:
        t.start()
    done: dict = {}
    nxt, running = 0, len(threads)
    interrupted = False
    try:
        while True:
            while nxt in done:
                batch, result = done.pop(nxt)
                nxt += 1
                if batch is None:
                    raise result
                yield batch, result
                batch = result = None  # as in the streams: nothing kept while waiting for the next one
                slots.release()  # the consumer is done with this batch: a stream may take another
            if not running:
                return
            item = results.get()
            if item is None:
                running -= 1
            else:
                done[item[0]] = item[1:]
                item = None
    except KeyboardInterrupt:
        # An interrupt can land inside the semaphore's own code and leave its lock held: releasing or joining
        # then waits forever (a double Ctrl-C once hung a run). The process ends without tear-down
        # (common.cli.exit_now), and the streams are daemon threads: they are not waited for.
        interrupted = True
        raise
    finally:
        stop.set()
        if not interrupted:
            for _ in threads:  # wake every stream waiting for a slot; each sees `stop` and ends
                slots.release()
            for t in threads:
                t.join()


def _preflight_record(cfg: RunConfig, p: Prepared, exc, images_dir, ann_file) -> dict:
    """The record of an accuracy run the pre-flight stopped: no metrics, verdict fail, its reasons and report."""
    report = getattr(exc, "report", None) or {}
    record = new_record(
        "accuracy",
        **_base_fields(p),
        metrics={},
        preflight=report or None,
        dataset={
            "images_dir": str(images_dir),
            "annotation": str(ann_file),
            "num_images": 0,
            "stopped_by": "preflight",
        },
    )
    return _finish(record, {}, _targets(p), ["preflight: " + r for r in report.get("reasons", [])] or [str(exc)])


@contextmanager
def _about_model(onnx_path: Path):
    """Errors about the model that the runtimes, decoders and evaluator raise without a path (no such input or
    output, a fixed batch smaller than --bs, a label outside the label map) name the ONNX file."""
    try:
        yield
    except InputError as exc:
        if type(exc) is InputError and exc.path is None:
            raise InputError(str(exc), onnx_path) from None
        raise


def check_outputs(cfg: RunConfig, accuracy: bool, record: bool = True):
    """Every place the run will write, checked before any work (exit 2 naming it) rather than failing after
    the whole run: the results dir (records; an accuracy run's resume state), --save-detections,
    --record-outputs."""
    if record or accuracy:
        ensure_writable_dir(cfg.results_dir, "results dir")
    if accuracy and cfg.detections_out:
        check_output_file(cfg.detections_out, "--save-detections file")
    if accuracy and cfg.record_outputs:
        ensure_writable_dir(cfg.record_outputs, "--record-outputs dir")


def _intervals(cfg, evaluator, image_ids) -> tuple[dict | None, float]:
    """The bootstrap intervals of the stats (common/evaluate/bootstrap.py) and what they cost, in seconds."""
    if not cfg.bootstrap or not len(image_ids):
        return None, 0.0
    from common.evaluate.bootstrap import MatchTable, intervals

    t = time.perf_counter()
    ci = intervals(MatchTable.from_evaluator(evaluator, image_ids), cfg.bootstrap)
    return ci, time.perf_counter() - t


def run_accuracy(cfg: RunConfig, publish=None) -> dict:
    """The accuracy run. `publish(record)`, when given, stores the record (cli: write_record); the resume
    state is only cleared once it has returned, so a record that cannot be written loses no work."""
    states: list[RunState] = []
    # Objects that exist before the run are not the run's garbage: frozen, the collector skips them during the
    # run (in a caller with a large heap, every full collection walked all of it). A caller that froze objects
    # itself keeps them frozen as they are.
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    try:
        return _run_accuracy(cfg, publish, states)
    except BaseException:
        for state in states:  # a run that fails before saving anything leaves no empty state dir behind
            state.release()
        raise
    finally:
        if freeze:
            gc.unfreeze()  # the caller's garbage is collected again, as before the run


def _run_accuracy(cfg: RunConfig, publish, states: list) -> dict:
    t_start = time.perf_counter()
    streams, workers = parallelism(cfg, backend_class(cfg.backend).capabilities)
    cfg = dataclasses.replace(cfg, streams=streams, workers=workers)
    engine = engine_request(cfg)
    check_outputs(cfg, accuracy=True)
    check_before_images(engine)
    remember = EngineCache(cfg.cache_dir) if cfg.cache_dir else None
    variant = load_model(cfg.model, remember).variant(cfg.variant)
    images_dir, ann_file = resolve_dataset(cfg.dataset_dir, cfg.annotation or variant.annotation, cfg.images_dir)
    annotations = read_annotations(ann_file, polygons=False, remember=remember)
    items = image_items(annotations, images_dir, cfg.max_images)
    _note_unjudged_targets(variant, cfg, len(items))
    shard = None
    if cfg.shard:  # only this shard's images; the merge evaluates the union (common/harness/shards.py)
        shard = ShardPlan.of(cfg.shard, cfg.shard_source, items)
        items = shard.items
        print(shard.describe(), flush=True)
    evaluator = CocoEvaluator(annotations, variant.label_map, variant.categories, cfg.evaluator, source=ann_file)
    decoder = get_decoder(variant.output)
    decode_cfg = variant.decode_cfg
    pre = Preprocessor(variant.preprocess, variant.height, variant.width)
    onnx_path = resolve_onnx(engine, variant)
    onnx_sha256 = file_sha256_memo(onnx_path, sha256_memo_dir(cfg.cache_dir))
    state = RunState(
        Path(cfg.results_dir) / ".run-state",
        onnx_sha256,
        cfg.checkpoint_s,
        spec=repr(variant),
        precision=cfg.precision,
        batch_size=cfg.batch_size,
        backend=cfg.backend,
        device=cfg.device or "",
        annotation=file_sha256_memo(ann_file, sha256_memo_dir(cfg.cache_dir)),
        images_dir=str(images_dir.resolve()),
        n=len(items),
    )
    # A recording of raw outputs must cover every image, so it always starts from the first one.
    states.append(state)
    if state.claim() and not (cfg.resume and not cfg.record_outputs):
        state.discard()  # not resumed: chunks of an earlier run must not mix with this run's
    done, chunks = state.load() if cfg.resume and not cfg.record_outputs else (0, [])
    nonfinite: Counter = Counter()
    resumed = []  # the rows of the resumed images, which the detections file starts with
    for c in chunks:
        resumed.append(evaluator.add(c["image_ids"], c["boxes"], c["scores"], c["labels"]))
        nonfinite.update(c["nonfinite"])
    evaluator.complete([it.image_id for it in items[:done]])
    if shard is not None and not items:  # more shards than images: nothing to infer, the engine still identifies it
        evaluator.close()
        p = prepare(engine, variant, onnx_sha256, onnx_path)
        return _shard_result(
            cfg,
            p,
            shard,
            evaluator,
            images_dir,
            ann_file,
            variant,
            nonfinite,
            {"wall_s": time.perf_counter() - t_start, "inference_s": 0.0, "images_per_s": 0.0},
            publish,
            state,
        )
    # The loader forks its workers before prepare() starts the runtime's threads.
    with open_loader(
        items[done:],
        pre,
        cfg.batch_size,
        workers,
        cfg.progress,
        desc=variant.id,
        cache_dir=None if done else cfg.input_cache,
    ) as loader:
        batches = iter(loader)
        # The engine is built / loaded while the first images decode: a cold start would otherwise leave the
        # decoding core idle for as long as a session set-up (or an engine build) takes.
        setup = ThreadPoolExecutor(1)
        future = setup.submit(prepare, engine, variant, onnx_sha256, onnx_path)
        ahead = _read_ahead(batches, future, max(1, READ_AHEAD_IMAGES // cfg.batch_size))
        with _about_model(onnx_path):
            p = future.result()
        setup.submit(_read_environment)
        setup.shutdown(wait=False)
        if needs_preflight(cfg, p.backend):  # a broken engine fails here in seconds, not after the full pass
            from common.harness.preflight import FidelityFailure, preflight  # only here: its imports cost ~20 ms

            try:
                with _about_model(onnx_path):
                    preflight(p, cfg.preflight, items, annotations)
            except FidelityFailure as exc:  # exit 1 promises a record: verdict fail, the pre-flight's reasons
                print(
                    "error: preflight: the engine is out of tolerance against the FP32 reference (reasons above "
                    "and in the record; see docs/fidelity.md; --preflight 0 skips this check)",
                    file=sys.stderr,
                )
                record = _preflight_record(cfg, p, exc, images_dir, ann_file)
                if publish is not None:
                    publish(record)
                return record
        recorder = (
            OutputRecorder(cfg.record_outputs, p.onnx_sha256, p.request.options["preprocess_key"])
            if cfg.record_outputs
            else None
        )
        # `streams` runners each take one batch at a time (same batch size as asked), so several requests are in
        # flight at once while the next images decode: the device, not the harness, sets the pace.
        runners = (
            [p.runner] * streams
            if p.runner.concurrent
            else [p.runner] + [p.backend.load(p.engine, p.request) for _ in range(streams - 1)]
        )
        infer_s = 0.0
        start = done
        marks: dict = {}  # when the first inference started and the last batch was consumed: setup_s, tail_s

        def timed_infer(runner, batch):
            t0 = time.perf_counter()
            marks.setdefault("first", t0)
            out = infer(runner, batch.inputs, batch.image_ids)
            return out, time.perf_counter() - t0

        def consume(batch, outputs, seconds):
            nonlocal infer_s, start
            infer_s += seconds
            if recorder is not None:
                recorder.add(batch.image_ids, outputs)
            counts = output_faults(outputs, decode_cfg)  # NaN/Inf, and scores outside [0, 1]
            nonfinite.update(counts)
            bi, boxes, scores, labels = decoder(outputs, batch.meta, decode_cfg)
            finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
            ids = batch.image_ids[bi[finite]]
            rows = evaluator.add(ids, boxes[finite], scores[finite], labels[finite])
            if detections is not None:
                detections.add(rows)  # formatted and written by its own thread while the next batches infer
            evaluator.complete(batch.image_ids)  # matched in the background while the next batches infer
            state.save(start, len(batch.image_ids), ids, boxes[finite], scores[finite], labels[finite], counts)
            start += len(batch.image_ids)

        # --save-detections is streamed: written batch by batch during the run, published once complete (a
        # shard's detections are written with its partial record, by _shard_result)
        detections = DetectionsFile(cfg.detections_out) if cfg.detections_out and shard is None else None
        try:
            if detections is not None:
                for rows in resumed:
                    detections.add(rows)
            with _about_model(onnx_path):
                for batch, (outputs, seconds) in _in_streams(chain(_drain(ahead), batches), runners, timed_infer):
                    consume(batch, outputs, seconds)
                    marks["last"] = time.perf_counter()
                    del batch, outputs  # its buffer goes back to the loader now, not when the next batch comes
        except BaseException as exc:
            state.flush()  # every batch consumed so far is complete: keep it for the resumed run
            evaluator.close()
            if detections is not None:
                detections.discard()
            if isinstance(exc, OSError) and detections is not None and exc is detections.error:
                raise RuntimeFailure(f"cannot write the detections ({exc.strerror})", cfg.detections_out) from None
            raise
        if recorder is not None:
            recorder.write()
    if shard is not None:
        evaluator.close()
        return _shard_result(
            cfg,
            p,
            shard,
            evaluator,
            images_dir,
            ann_file,
            variant,
            nonfinite,
            {
                "wall_s": time.perf_counter() - t_start,
                "inference_s": infer_s,
                "images_per_s": (len(items) - done) / (time.perf_counter() - t_start),
                "workers": cfg.workers,
                "streams": cfg.streams,
                "resumed_images": done,
                "input_cache_hit": loader.cached is not None,
            },
            publish,
            state,
        )
    image_ids = [it.image_id for it in items]
    try:
        t_eval = time.perf_counter()
        metrics = evaluator.evaluate(image_ids)
        coverage = category_coverage(annotations, evaluator.store.rows(), image_ids, evaluator.categories)
        evaluate_s = time.perf_counter() - t_eval
        metrics_ci, bootstrap_s = _intervals(cfg, evaluator, image_ids)
        write_s = None
        if detections is not None:  # the rest of the file's writing is in the run's time
            t_write = time.perf_counter()
            try:
                detections.commit()
            except OSError as exc:
                raise RuntimeFailure(f"cannot write the detections ({exc.strerror})", cfg.detections_out) from None
            detections, write_s = None, time.perf_counter() - t_write
        wall = time.perf_counter() - t_start
        reasons = fault_reasons(nonfinite)
        record = new_record(
            "accuracy",
            **_base_fields(p),
            dataset={
                "images_dir": str(images_dir),
                "annotation": str(ann_file),
                "num_images": len(items),
                "categories": evaluator.categories,
                "evaluator": evaluator.engine,
                "input_cache_hit": loader.cached is not None,
                "category_coverage": coverage,
            },
            metrics=metrics,
            metrics_ci=metrics_ci,
            accuracy_detail=accuracy_detail(evaluator.accumulated(), evaluator.categories, annotations),
            num_detections=len(evaluator.store),
            detections_file=cfg.detections_out,
            run={
                "wall_s": wall,
                "inference_s": infer_s,
                "evaluate_s": evaluate_s,
                "bootstrap_s": bootstrap_s,
                "save_detections_tail_s": write_s,
                # before the first inference (engine, loader, annotations) and after the last batch (evaluation,
                # intervals, the detections file's end): what a faster device cannot shorten
                "setup_s": marks["first"] - t_start if "first" in marks else None,
                "tail_s": time.perf_counter() - marks["last"] if "last" in marks else None,
                "simulated_device_s": p.runner.simulated_device_s,
                "images_per_s": (len(items) - done) / wall,  # this run's images only
                "workers": cfg.workers,
                "streams": cfg.streams,
                "resumed_images": done,
            },
        )
        record = _finish(record, metrics, _targets(p), reasons)
        if publish is not None:
            publish(record)
    except BaseException as exc:
        if detections is not None:
            detections.discard()
        # nothing is lost: every prediction stays in the resume state, and a rerun only evaluates and writes
        with suppress(OSError):
            state.flush()
        if isinstance(exc, RuntimeFailure) and state.enabled and cfg.resume:
            raise RuntimeFailure(
                f"{exc}; the predictions are kept in {state.dir}: once fixed, rerun the same "
                "command to evaluate and write without recomputing them"
            ) from None
        raise
    state.clear()  # the record is safely written; a rerun should measure afresh
    return record


def _shard_result(
    cfg: RunConfig,
    p: Prepared,
    shard: ShardPlan,
    evaluator,
    images_dir,
    ann_file,
    variant: Variant,
    nonfinite: Counter,
    run: dict,
    publish,
    state: RunState,
) -> dict:
    """A shard's partial record (no metrics: targets are judged on the merged record) and its detections, written
    to its results dir; the resume state is cleared once both are there."""
    rows = evaluator.store.rows()
    identity = {
        "onnx_sha256": p.onnx_sha256,
        "precision": cfg.precision,
        "engine_key": engine_key(p),
        "dataset": shard.dataset,
        "annotation_sha256": file_sha256_memo(ann_file, sha256_memo_dir(cfg.cache_dir)),
        "backend": p.backend.name,
        "batch_size": cfg.batch_size,
        "spec": hashlib.sha256(repr(variant).encode()).hexdigest()[:32],
        "model": p.variant.model,
        "variant": p.variant.name,
        "categories": evaluator.categories,
    }
    gpu = os.environ.get("SUITE_GPU_INDEX")
    record = new_record(
        SHARD_KIND,
        **_base_fields(p),
        model_arg=cfg.model,
        identity=identity,
        shard={
            "index": shard.index,
            "total": shard.total,
            "source": shard.source,
            "first": shard.start + 1,
            "last": shard.stop,
            "all_images": shard.all_count,
            "max_images": cfg.max_images,
            "ids_sha256": ids_digest(it.image_id for it in shard.items),
            "gpu_index": int(gpu) if gpu and gpu.isdigit() else None,
            "request": request_key(cfg),
        },
        dataset={
            "images_dir": str(images_dir),
            "annotation": str(ann_file),
            "num_images": len(shard.items),
            "categories": evaluator.categories,
        },
        metrics={},
        num_detections=len(rows),
        nonfinite=dict(nonfinite),
        run=run,
    )
    reasons = fault_reasons(nonfinite)
    record.update(targets=[], checks=[], verdict=verdict_of([], reasons), reasons=reasons)
    try:
        if cfg.detections_out:
            try:
                atomic_write_bytes(cfg.detections_out, json.dumps(to_coco_results(rows)).encode())
            except OSError as exc:
                raise RuntimeFailure(f"cannot write the detections ({exc.strerror})", cfg.detections_out) from None
        if publish is not None:
            record["path"] = str(write_shard(cfg.results_dir, record, rows))
    except BaseException:
        with suppress(OSError):
            state.flush()
        raise
    state.clear()
    return record


def dataset_sample(cfg: RunConfig, variant: Variant, n: int) -> tuple[list | None, str]:
    """(the first n images of the configured dataset, its annotation file name), or (None, why there are none).
    Timing needs pixels, not annotations: without the annotation file the images dir's first n files serve."""
    try:
        images_dir = resolve_images_dir(cfg.dataset_dir, cfg.images_dir)
    except ConfigError as exc:
        return None, f"no dataset configured ({exc})"
    try:
        _, ann_file = resolve_dataset(cfg.dataset_dir, cfg.annotation or variant.annotation, cfg.images_dir)
    except (ConfigError, InputError) as exc:
        if cfg.annotation:  # named explicitly: a wrong name is the user's mistake, not a fallback
            raise
        return folder_items(images_dir, n), f"{images_dir} (no annotation file, none needed to time: {first_line(exc)})"
    return image_items(read_annotations(ann_file, polygons=False), images_dir, n), ann_file.name


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


def run_performance(cfg: RunConfig, publish=None) -> dict:
    """The performance run; `publish(record)` as in run_accuracy (its destination is checked first)."""
    if publish is not None:
        check_outputs(cfg, accuracy=False)
    engine = engine_request(cfg)
    check_before_images(engine)
    variant = load_model(cfg.model).variant(cfg.variant)
    onnx_path = resolve_onnx(engine, variant)
    with _about_model(onnx_path):
        record = _measure_performance(cfg, prepare(engine, variant, onnx_path=onnx_path))
    if publish is not None:
        publish(record)
    return record


def _measure_performance(cfg: RunConfig, p: Prepared) -> dict:
    sample = dataset_sample(cfg, p.variant, max(cfg.batch_size, E2E_IMAGES))  # one read for both timings
    x, source = timing_inputs(cfg, p.variant, sample)
    last: dict = {}

    def step():
        last["out"] = infer(p.runner, x)

    with Sampler(p.backend.telemetry_tool(), gpu_index=p.runner.device_index) as sampler:
        stats = measure(
            step,
            p.runner.sync,
            cfg.batch_size,
            warmup_s=cfg.warmup_s,
            min_iters=cfg.min_iters,
            min_duration_s=cfg.min_duration_s,
            progress=console_progress(f"{p.variant.id} bs{cfg.batch_size}", cfg.progress),
        )
    # A speed figure is only worth something if the engine computes numbers: check the outputs it timed.
    reasons = [f"output '{name}' has {n} NaN/Inf values" for name, n in nonfinite_counts(last["out"]).items()]
    reasons += validity_reasons(stats, cfg.min_iters, cfg.min_duration_s)
    values: dict[str, float | None] = {
        "fps": stats.fps,
        "latency_mean_ms": stats.mean_ms,
        "latency_p50_ms": stats.p50_ms,
        "latency_p90_ms": stats.p90_ms,
        "latency_p99_ms": stats.p99_ms,
    }
    items = sample[0][:E2E_IMAGES] if sample[0] else None
    e2e = (
        {
            "stats": measure_end_to_end(
                p.runner, p.variant, items, cfg.batch_size, cfg.warmup_s, cfg.min_duration_s
            ).as_dict(),
            "images": len(items),
            "reason": None,
        }
        if items
        else {"stats": None, "images": 0, "reason": f"{sample[1]}: end-to-end time needs real images"}
    )
    compute = compute_time(p.runner, x, stats)
    # Three FPS, each under its own name (targets name the one they mean; docs/engines.md "FPS definitions"):
    # a published MR-V100 figure is compute-only (batch * 1000 / mean time_evaluator ms): compare it with
    # fps_compute, never with fps (harness) or fps_e2e (with JPEG decoding and pre/post-processing)
    values["fps_compute"] = compute.get("fps")
    e2e_stats = e2e.get("stats")
    values["fps_e2e"] = e2e_stats["fps"] if isinstance(e2e_stats, dict) else None
    record = new_record(
        "performance",
        **_base_fields(p),
        input=source,
        timing=stats.as_dict(),
        timing_settings={
            "warmup_s": cfg.warmup_s,
            "min_duration_s": cfg.min_duration_s,
            "min_iters": cfg.min_iters,
            "threads": cfg.threads,
        },
        compute=compute,
        end_to_end=e2e,
        fps_definitions=FPS_DEFINITIONS,
        timed_detections=from_timing_sample(p.variant, last["out"], sample[0], cfg.batch_size),
        telemetry=sampler.summary(stats.fps),
        metrics=values,
    )
    return _finish(record, values, _targets(p), reasons)
