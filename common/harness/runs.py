"""The two drivers: an accuracy run and a performance run. Both share everything up to the runner.

accuracy:    spec + dataset -> loader -> runner.infer -> decode -> evaluate -> record -> check -> exit code
performance: spec -> engine (cached) -> runner timed -> stats -> record -> check -> exit code

A driver reads its RunConfig once into the stages' requests (common/harness/requests.py, docs/stages.md); each stage
below (read_dataset, new_evaluator, the engine, the pre-flight, infer_all, evaluate, measure_performance) takes only
its request.
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
from common.config.options import RunConfig  # noqa: F401  RunConfig: re-exported for callers of the drivers
from common.config.specs import Variant, load_model
from common.data.coco import DatasetRequest, folder_items, image_items, read_annotations, read_image
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
from common.harness.requests import (
    EngineRequest,
    EvaluationRequest,
    OutputsRequest,
    StageRequests,
    TimingRequest,
    parallelism,
    request_key,
    stage_requests,
)
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
    return [t.as_dict() for t in targets]


def _note_unjudged_targets(variant: Variant, precision: str, n_images: int) -> None:
    """Said before any image is read: targets declared for more images than this run evaluates (a published
    full-val2017 figure on a subset) will be reported "not judged", neither passed nor failed."""
    short = sorted(
        {
            t.min_images
            for t in variant.targets
            if t.min_images and n_images < t.min_images and precision in t.precisions
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


def needs_preflight(n_images: int, backend, precision: str) -> bool:
    """Only a candidate that is not the reference itself (and not a replay of stored outputs), on images > 0."""
    return bool(n_images) and not backend.capabilities.replays and not backend.is_reference(precision)


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


def _preflight_record(p: Prepared, exc, images_dir, ann_file) -> dict:
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


def check_outputs(outputs: OutputsRequest, accuracy: bool, record: bool = True):
    """Every place the run will write, checked before any work (exit 2 naming it) rather than failing after
    the whole run: the results dir (records; an accuracy run's resume state), --save-detections,
    --record-outputs."""
    if record or accuracy:
        ensure_writable_dir(outputs.results_dir, "results dir")
    if accuracy and outputs.detections_out:
        check_output_file(outputs.detections_out, "--save-detections file")
    if accuracy and outputs.record_outputs:
        ensure_writable_dir(outputs.record_outputs, "--record-outputs dir")


def _intervals(req: EvaluationRequest, evaluator, image_ids) -> tuple[dict | None, float]:
    """The bootstrap intervals of the stats (common/evaluate/bootstrap.py) and what they cost, in seconds."""
    if not req.bootstrap or not len(image_ids):
        return None, 0.0
    from common.evaluate.bootstrap import MatchTable, intervals

    t = time.perf_counter()
    ci = intervals(MatchTable.from_evaluator(evaluator, image_ids), req.bootstrap)
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


@dataclasses.dataclass
class Dataset:
    """The dataset stage's answer: the annotation file read and the images this run evaluates (under --shard only
    its shard's, `shard` saying which)."""

    images_dir: Path
    ann_file: Path
    annotations: dict
    items: list
    shard: ShardPlan | None = None

    def sharded(self, shard: str, source: str | None) -> Dataset:
        """Only the images of shard "K/N" (the merge evaluates the union: common/harness/shards.py), said."""
        plan = ShardPlan.of(shard, source, self.items)
        print(plan.describe(), flush=True)
        return dataclasses.replace(self, items=plan.items, shard=plan)


def read_dataset(req: DatasetRequest, variant: Variant, remember: EngineCache | None = None) -> Dataset:
    """The dataset stage: the annotation file (the asked one, else the variant's) checked and read, and its first
    `req.max_images` images by id."""
    images_dir, ann_file = req.resolve(variant.annotation)
    annotations = read_annotations(ann_file, polygons=False, remember=remember)
    return Dataset(images_dir, ann_file, annotations, image_items(annotations, images_dir, req.max_images))


def new_evaluator(data: Dataset, variant: Variant, req: EvaluationRequest) -> CocoEvaluator:
    """The evaluation stage's evaluator of `data`, fed while the run infers."""
    return CocoEvaluator(data.annotations, variant.label_map, variant.categories, req.evaluator, source=data.ann_file)


def _run_state(outputs: OutputsRequest, engine: EngineRequest, interval_s: float, variant, onnx_sha256, data):
    """The resume state of this run: keyed by everything its predictions depend on."""
    return RunState(
        Path(outputs.results_dir) / ".run-state",
        onnx_sha256,
        interval_s,
        spec=repr(variant),
        precision=engine.precision,
        batch_size=engine.batch_size,
        backend=engine.backend,
        device=engine.device or "",
        annotation=file_sha256_memo(data.ann_file, sha256_memo_dir(engine.cache_dir)),
        images_dir=str(data.images_dir.resolve()),
        n=len(data.items),
    )


@dataclasses.dataclass
class Resumed:
    """What an interrupted identical run left: the predictions of its first `done` images, in the evaluator."""

    done: int
    nonfinite: Counter
    rows: list  # the detections file's rows of those images, which the file starts with


def _resume(state: RunState, evaluator: CocoEvaluator, items: list, enabled: bool) -> Resumed:
    """The resume stage: an earlier identical run's saved predictions taken back (`enabled`), else discarded so
    that its chunks never mix with this run's."""
    if state.claim() and not enabled:
        state.discard()
    done, chunks = state.load() if enabled else (0, [])
    resumed = Resumed(done, Counter(), [])
    for c in chunks:
        resumed.rows.append(evaluator.add(c["image_ids"], c["boxes"], c["scores"], c["labels"]))
        resumed.nonfinite.update(c["nonfinite"])
    evaluator.complete([it.image_id for it in items[:done]])
    return resumed


def _engine_while_decoding(engine: EngineRequest, variant, onnx_sha256, onnx_path, batches) -> tuple[Prepared, list]:
    """The engine stage, built / loaded while the first images decode: a cold start would otherwise leave the
    decoding core idle for as long as a session set-up (or an engine build) takes. (engine, batches read ahead)"""
    setup = ThreadPoolExecutor(1)
    future = setup.submit(prepare, engine, variant, onnx_sha256, onnx_path)
    ahead = _read_ahead(batches, future, max(1, READ_AHEAD_IMAGES // engine.batch_size))
    with _about_model(onnx_path):
        p = future.result()
    setup.shutdown(wait=False)
    return p, ahead


def _preflight_stage(p: Prepared, n_images: int, data: Dataset) -> dict | None:
    """The pre-flight: None when the engine is within tolerance of the FP32 reference on the first `n_images`
    (or has none to meet), else the record of the run it stopped (exit 1 promises a record)."""
    if not needs_preflight(n_images, p.backend, p.asked.precision):
        return None
    from common.harness.preflight import FidelityFailure, preflight  # only here: its imports cost ~20 ms

    try:
        with _about_model(p.onnx_path):
            preflight(p, n_images, data.items, data.annotations)
    except FidelityFailure as exc:
        print(
            "error: preflight: the engine is out of tolerance against the FP32 reference (reasons above "
            "and in the record; see docs/fidelity.md; --preflight 0 skips this check)",
            file=sys.stderr,
        )
        return _preflight_record(p, exc, data.images_dir, data.ann_file)
    return None


def _runners(p: Prepared, streams: int) -> list:
    """`streams` runners each take one batch at a time (same batch size as asked), so several requests are in
    flight at once while the next images decode: the device, not the harness, sets the pace."""
    if p.runner.concurrent:
        return [p.runner] * streams
    return [p.runner] + [p.backend.load(p.engine, p.request) for _ in range(streams - 1)]


@dataclasses.dataclass
class Sinks:
    """Where the inference stage puts what it computes besides the evaluator and the resume state."""

    nonfinite: Counter  # per output: NaN/Inf values and scores outside [0, 1]
    recorder: OutputRecorder | None = None  # --record-outputs: the raw outputs
    detections: DetectionsFile | None = None  # --save-detections: streamed while the run infers
    marks: dict = dataclasses.field(default_factory=dict)  # when the first inference started, the last batch ended


def infer_all(
    p: Prepared, runners: list, batches, decoder, evaluator, state: RunState, start: int, sinks: Sinks
) -> float:
    """The inference stage: every batch through the runners, its outputs checked (counted into
    `sinks.nonfinite`), decoded and handed to the evaluator (matched in the background while the next batches
    infer), the resume state (images from `start` on) and the sinks. The seconds spent in the runners."""
    recorder, detections, nonfinite, marks = sinks.recorder, sinks.detections, sinks.nonfinite, sinks.marks
    decode_cfg = p.variant.decode_cfg
    infer_s = 0.0

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

    with _about_model(p.onnx_path):
        for batch, (outputs, seconds) in _in_streams(batches, runners, timed_infer):
            consume(batch, outputs, seconds)
            marks["last"] = time.perf_counter()
            del batch, outputs  # its buffer goes back to the loader now, not when the next batch comes
    return infer_s


@dataclasses.dataclass
class Evaluated:
    """The evaluation stage's answer."""

    metrics: dict  # the 12 COCO stats
    coverage: dict  # per category: images, ground truth and detections (evaluate/metrics.category_coverage)
    evaluate_s: float
    intervals: dict | None  # the stats' bootstrap intervals (None: not asked for, or no image)
    bootstrap_s: float


def evaluate(evaluator: CocoEvaluator, data: Dataset, req: EvaluationRequest) -> Evaluated:
    """The evaluation stage, once every batch was handed to `evaluator`: the stats of every image of `data`, each
    category's coverage and the stats' bootstrap intervals (`req.bootstrap` resamples)."""
    image_ids = [it.image_id for it in data.items]
    t_eval = time.perf_counter()
    metrics = evaluator.evaluate(image_ids)
    coverage = category_coverage(data.annotations, evaluator.store.categories(), image_ids, evaluator.categories)
    evaluate_s = time.perf_counter() - t_eval
    metrics_ci, bootstrap_s = _intervals(req, evaluator, image_ids)
    return Evaluated(metrics, coverage, evaluate_s, metrics_ci, bootstrap_s)


def _accuracy_record(p: Prepared, data: Dataset, evaluator, ev: Evaluated, detail, run: dict, detections_file, hit):
    """The accuracy record, before its targets are judged. `hit`: whether the inputs came from the input cache."""
    return new_record(
        "accuracy",
        **_base_fields(p),
        dataset={
            "images_dir": str(data.images_dir),
            "annotation": str(data.ann_file),
            "num_images": len(data.items),
            "categories": evaluator.categories,
            "evaluator": evaluator.engine,
            "input_cache_hit": hit,
            "category_coverage": ev.coverage,
        },
        metrics=ev.metrics,
        metrics_ci=ev.intervals,
        accuracy_detail=detail,
        num_detections=len(evaluator.store),
        detections_file=detections_file,
        run=run,
    )


@dataclasses.dataclass
class RunClock:
    """What the record's `run` section says of an accuracy run, gathered as it goes."""

    t_start: float
    workers: int
    streams: int
    resumed: int  # images whose predictions came from the resume state
    inference_s: float = 0.0

    def shard_run(self, n_images: int, cache_hit: bool) -> dict:
        """A shard's `run` section."""
        return {
            "wall_s": time.perf_counter() - self.t_start,
            "inference_s": self.inference_s,
            "images_per_s": (n_images - self.resumed) / (time.perf_counter() - self.t_start),
            "workers": self.workers,
            "streams": self.streams,
            "resumed_images": self.resumed,
            "input_cache_hit": cache_hit,
        }

    def accuracy_run(
        self, wall: float, ev: Evaluated, write_s: float | None, p: Prepared, n_images: int, marks: dict
    ) -> dict:
        """An accuracy record's `run` section (`wall`: the run's seconds up to its record; `marks`: the inference
        stage's Sinks.marks)."""
        return {
            "wall_s": wall,
            "inference_s": self.inference_s,
            "evaluate_s": ev.evaluate_s,
            "bootstrap_s": ev.bootstrap_s,
            "save_detections_tail_s": write_s,
            # before the first inference (engine, loader, annotations) and after the last batch (evaluation,
            # intervals, the detections file's end): what a faster device cannot shorten
            "setup_s": marks["first"] - self.t_start if "first" in marks else None,
            "tail_s": time.perf_counter() - marks["last"] if "last" in marks else None,
            "simulated_device_s": p.runner.simulated_device_s,
            "images_per_s": (n_images - self.resumed) / wall,  # this run's images only
            "workers": self.workers,
            "streams": self.streams,
            "resumed_images": self.resumed,
        }


def _sinks(p: Prepared, outputs: OutputsRequest, nonfinite: Counter, whole: bool) -> Sinks:
    """The raw outputs' recorder (--record-outputs) and the streamed detections file (--save-detections: written
    batch by batch during the run, published once complete; `whole` False: a shard, whose detections are written
    with its partial record by _shard_result)."""
    recorder = (
        OutputRecorder(outputs.record_outputs, p.onnx_sha256, p.request.options["preprocess_key"])
        if outputs.record_outputs
        else None
    )
    detections = DetectionsFile(outputs.detections_out) if outputs.detections_out and whole else None
    return Sinks(nonfinite, recorder, detections)


def _evaluate_and_record(
    p: Prepared, data: Dataset, evaluator, req: StageRequests, sinks: Sinks, clock: RunClock, cache_hit: bool, publish
) -> dict:
    """The evaluation stage, the detections file completed (its rest is in the run's time) and the record, judged
    and published."""
    ev = evaluate(evaluator, data, req.evaluation)
    write_s = None
    if sinks.detections is not None:
        t_write = time.perf_counter()
        try:
            sinks.detections.commit()
        except OSError as exc:
            raise RuntimeFailure(f"cannot write the detections ({exc.strerror})", req.outputs.detections_out) from None
        sinks.detections, write_s = None, time.perf_counter() - t_write
    # The run ends here, with its metrics known: the record's package versions and git state (~55 ms, mostly
    # holding the interpreter lock) are read while it is written. Read beside the inference, they left a 2627
    # images/s simulated device idle for 47 ms before its second batch; beside the accumulation, they slowed it.
    wall = time.perf_counter() - clock.t_start
    detail = accuracy_detail(evaluator.accumulated(), evaluator.categories, data.annotations)
    run = clock.accuracy_run(wall, ev, write_s, p, len(data.items), sinks.marks)
    record = _accuracy_record(p, data, evaluator, ev, detail, run, req.outputs.detections_out, cache_hit)
    record = _finish(record, ev.metrics, _targets(p), fault_reasons(sinks.nonfinite))
    if publish is not None:
        publish(record)
    return record


def _run_accuracy(cfg: RunConfig, publish, states: list) -> dict:
    t_start = time.perf_counter()
    streams, workers = parallelism(cfg.streams, cfg.workers, backend_class(cfg.backend).capabilities)
    cfg = dataclasses.replace(cfg, streams=streams, workers=workers)
    req = stage_requests(cfg)
    check_outputs(req.outputs, accuracy=True)
    check_before_images(req.engine)
    remember = EngineCache(cfg.cache_dir) if cfg.cache_dir else None
    variant = load_model(cfg.model, remember).variant(cfg.variant)
    data = read_dataset(req.dataset, variant, remember)
    _note_unjudged_targets(variant, cfg.precision, len(data.items))
    if cfg.shard:
        data = data.sharded(cfg.shard, cfg.shard_source)
    items, shard = data.items, data.shard
    evaluator = new_evaluator(data, variant, req.evaluation)
    decoder = get_decoder(variant.output)
    pre = Preprocessor(variant.preprocess, variant.height, variant.width)
    onnx_path = resolve_onnx(req.engine, variant)
    onnx_sha256 = file_sha256_memo(onnx_path, sha256_memo_dir(cfg.cache_dir))
    state = _run_state(req.outputs, req.engine, cfg.checkpoint_s, variant, onnx_sha256, data)
    states.append(state)
    # A recording of raw outputs must cover every image, so it always starts from the first one.
    resumed = _resume(state, evaluator, items, cfg.resume and not cfg.record_outputs)
    clock = RunClock(t_start, workers, streams, resumed.done)
    if shard is not None and not items:  # more shards than images: nothing to infer, the engine still identifies it
        evaluator.close()
        p = prepare(req.engine, variant, onnx_sha256, onnx_path)
        run: dict = {"wall_s": time.perf_counter() - t_start, "inference_s": 0.0, "images_per_s": 0.0}
        return _shard_result(
            p, data, evaluator, resumed.nonfinite, run, state, publish, cfg.model, req, request_key(cfg)
        )
    # The loader forks its workers before prepare() starts the runtime's threads.
    cache_dir = None if resumed.done else cfg.input_cache
    with open_loader(
        items[resumed.done :], pre, cfg.batch_size, workers, cfg.progress, desc=variant.id, cache_dir=cache_dir
    ) as loader:
        batches = iter(loader)
        p, ahead = _engine_while_decoding(req.engine, variant, onnx_sha256, onnx_path, batches)
        stopped = _preflight_stage(p, cfg.preflight, data)  # a broken engine fails here in seconds
        if stopped is not None:
            if publish is not None:
                publish(stopped)
            return stopped
        sinks = _sinks(p, req.outputs, resumed.nonfinite, whole=shard is None)
        try:
            if sinks.detections is not None:  # the file starts with the resumed images' rows
                for rows in resumed.rows:
                    sinks.detections.add(rows)
            batches = chain(_drain(ahead), batches)
            clock.inference_s = infer_all(
                p, _runners(p, streams), batches, decoder, evaluator, state, resumed.done, sinks
            )
        except BaseException as exc:
            state.flush()  # every batch consumed so far is complete: keep it for the resumed run
            evaluator.close()
            detections = sinks.detections
            if detections is not None:
                detections.discard()
            if isinstance(exc, OSError) and detections is not None and exc is detections.error:
                raise RuntimeFailure(f"cannot write the detections ({exc.strerror})", cfg.detections_out) from None
            raise
        if sinks.recorder is not None:
            sinks.recorder.write()
    if shard is not None:
        evaluator.close()
        run = clock.shard_run(len(items), loader.cached is not None)
        return _shard_result(
            p, data, evaluator, resumed.nonfinite, run, state, publish, cfg.model, req, request_key(cfg)
        )
    try:
        record = _evaluate_and_record(p, data, evaluator, req, sinks, clock, loader.cached is not None, publish)
    except BaseException as exc:
        if sinks.detections is not None:
            sinks.detections.discard()
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
    p: Prepared,
    data: Dataset,
    evaluator,
    nonfinite: Counter,
    run: dict,
    state: RunState,
    publish,
    model_arg: str,
    req: StageRequests,
    request: str,
) -> dict:
    """A shard's partial record (no metrics: targets are judged on the merged record) and its detections, written
    to its results dir; the resume state is cleared once both are there. `model_arg`: the model as the command
    named it; `request`: the command's key (requests.request_key)."""
    assert data.shard is not None, "only a shard run has a shard result"
    shard, outputs = data.shard, req.outputs
    rows = evaluator.store.rows()
    identity = {
        "onnx_sha256": p.onnx_sha256,
        "precision": p.asked.precision,
        "engine_key": engine_key(p),
        "dataset": shard.dataset,
        "annotation_sha256": file_sha256_memo(data.ann_file, sha256_memo_dir(p.asked.cache_dir)),
        "backend": p.backend.name,
        "batch_size": p.asked.batch_size,
        "spec": hashlib.sha256(repr(p.variant).encode()).hexdigest()[:32],
        "model": p.variant.model,
        "variant": p.variant.name,
        "categories": evaluator.categories,
    }
    gpu = os.environ.get("SUITE_GPU_INDEX")
    record = new_record(
        SHARD_KIND,
        **_base_fields(p),
        model_arg=model_arg,
        identity=identity,
        shard={
            "index": shard.index,
            "total": shard.total,
            "source": shard.source,
            "first": shard.start + 1,
            "last": shard.stop,
            "all_images": shard.all_count,
            "max_images": req.dataset.max_images,
            "ids_sha256": ids_digest(it.image_id for it in shard.items),
            "gpu_index": int(gpu) if gpu and gpu.isdigit() else None,
            "request": request,
        },
        dataset={
            "images_dir": str(data.images_dir),
            "annotation": str(data.ann_file),
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
        if outputs.detections_out:
            try:
                atomic_write_bytes(outputs.detections_out, json.dumps(to_coco_results(rows)).encode())
            except OSError as exc:
                raise RuntimeFailure(f"cannot write the detections ({exc.strerror})", outputs.detections_out) from None
        if publish is not None:
            record["path"] = str(write_shard(outputs.results_dir, record, rows))
    except BaseException:
        with suppress(OSError):
            state.flush()
        raise
    state.clear()
    return record


def dataset_sample(dataset: DatasetRequest, variant: Variant, n: int) -> tuple[list | None, str]:
    """(the first n images of the configured dataset, its annotation file name), or (None, why there are none).
    Timing needs pixels, not annotations: without the annotation file the images dir's first n files serve."""
    try:
        images_dir = dataset.images()
    except ConfigError as exc:
        return None, f"no dataset configured ({exc})"
    try:
        _, ann_file = dataset.resolve(variant.annotation)
    except (ConfigError, InputError) as exc:
        if dataset.annotation:  # named explicitly: a wrong name is the user's mistake, not a fallback
            raise
        return folder_items(images_dir, n), f"{images_dir} (no annotation file, none needed to time: {first_line(exc)})"
    return image_items(read_annotations(ann_file, polygons=False), images_dir, n), ann_file.name


def timing_inputs(
    dataset: DatasetRequest, variant: Variant, batch_size: int, sample: tuple | None = None
) -> tuple[np.ndarray, str]:
    """Real preprocessed images when a dataset is at hand (post-processing inside a graph depends on the
    content), else seeded random data. `sample`: dataset_sample()'s answer, when the caller has it already."""
    pre = Preprocessor(variant.preprocess, variant.height, variant.width)
    x = np.empty((batch_size, 3, variant.height, variant.width), np.float32)
    items, source = sample or dataset_sample(dataset, variant, batch_size)
    if items is None:
        x[:] = np.random.default_rng(0).standard_normal(x.shape, np.float32)
        return x, "random"
    for i in range(batch_size):
        x[i] = pre(read_image(items[i % len(items)].path))[0]
    return x, f"{min(len(items), batch_size)} image(s) from {source}"


def run_performance(cfg: RunConfig, publish=None) -> dict:
    """The performance run; `publish(record)` as in run_accuracy (its destination is checked first)."""
    req = stage_requests(cfg)
    if publish is not None:
        check_outputs(req.outputs, accuracy=False)
    check_before_images(req.engine)
    variant = load_model(cfg.model).variant(cfg.variant)
    onnx_path = resolve_onnx(req.engine, variant)
    with _about_model(onnx_path):
        record = measure_performance(prepare(req.engine, variant, onnx_path=onnx_path), req.timing, req.dataset)
    if publish is not None:
        publish(record)
    return record


def measure_performance(p: Prepared, timing: TimingRequest, dataset: DatasetRequest) -> dict:
    """The timing stage: the engine timed on a real batch (`dataset`'s, else random), end to end on real images,
    compute-only by the runtime's own timer where it has one; the performance record, judged."""
    batch_size = p.asked.batch_size
    sample = dataset_sample(dataset, p.variant, max(batch_size, E2E_IMAGES))  # one read for both timings
    x, source = timing_inputs(dataset, p.variant, batch_size, sample)
    last: dict = {}

    def step():
        last["out"] = infer(p.runner, x)

    with Sampler(p.backend.telemetry_tool(), gpu_index=p.runner.device_index) as sampler:
        stats = measure(
            step,
            p.runner.sync,
            batch_size,
            warmup_s=timing.warmup_s,
            min_iters=timing.min_iters,
            min_duration_s=timing.min_duration_s,
            progress=console_progress(f"{p.variant.id} bs{batch_size}", timing.progress),
        )
    # A speed figure is only worth something if the engine computes numbers: check the outputs it timed.
    reasons = [f"output '{name}' has {n} NaN/Inf values" for name, n in nonfinite_counts(last["out"]).items()]
    reasons += validity_reasons(stats, timing.min_iters, timing.min_duration_s)
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
                p.runner, p.variant, items, batch_size, timing.warmup_s, timing.min_duration_s
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
            "warmup_s": timing.warmup_s,
            "min_duration_s": timing.min_duration_s,
            "min_iters": timing.min_iters,
            "threads": p.asked.threads,
        },
        compute=compute,
        end_to_end=e2e,
        fps_definitions=FPS_DEFINITIONS,
        timed_detections=from_timing_sample(p.variant, last["out"], sample[0], batch_size),
        telemetry=sampler.summary(stats.fps),
        metrics=values,
    )
    return _finish(record, values, _targets(p), reasons)
