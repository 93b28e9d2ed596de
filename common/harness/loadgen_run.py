"""The LoadGen driver: spec + dataset -> preprocessed library -> engine -> LoadGen scenario -> record.

performance mode: LoadGen's verdict (valid or not, and why), QPS, latency percentiles and early-stopping estimates
from its own logs, checked against the spec's `loadgen:` targets; an invalid run fails, whatever the targets.
accuracy mode: every sample once; the detections LoadGen logged are evaluated with the suite's COCO evaluator,
checked against the variant's accuracy targets.
Server with find_peak_qps: tries target QPS values (doubling from the first, then bisecting) until the bound
of tries, each try's results recorded; the result is the highest valid one.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from common.config.loadgen_spec import read_loadgen_section
from common.config.options import RunConfig
from common.config.specs import load_model
from common.data.coco import folder_items, image_items, read_annotations
from common.data.loader import open_loader
from common.data.preprocess import Preprocessor
from common.decode.outputs import fault_reasons, get_decoder, output_faults
from common.engine_cache import EngineCache
from common.errors import ConfigError, InputError, first_line
from common.evaluate.metrics import CocoEvaluator
from common.harness.engine import infer as run_infer
from common.harness.engine import prepare, resolve_onnx
from common.harness.requests import dataset_request, engine_request, outputs_request, parallelism
from common.harness.runs import _base_fields, check_outputs
from common.loadgen import logs
from common.loadgen.settings import NOT_MLPERF, LoadgenConfig, effective, resolve, to_test_settings
from common.loadgen.sut import BatchingSUT, SampleLibrary
from common.record.results import _slug, check_targets, new_record, verdict_of
from common.runtime.backends import backend_class


def import_loadgen():
    """LoadGen's Python module, or a ConfigError (exit 2) saying how to install it."""
    try:
        import mlperf_loadgen
    except ImportError:
        raise ConfigError(
            "the loadgen command needs MLCommons LoadGen: install the optional layer with "
            "`bash scripts/setup.sh --loadgen` (requirements-loadgen.txt: mlcommons-loadgen)"
        ) from None
    return mlperf_loadgen


def _library(
    items, pre, batch_size: int, workers: int, progress: bool = True, input_cache: str | None = None
) -> SampleLibrary:
    """Every image of the run preprocessed: with an input cache its letterboxed uint8 canvases (memory-mapped
    when the entry exists), normalised per gathered batch; else the float32 inputs, decoded now."""
    with open_loader(
        items, pre, batch_size, workers, progress, desc="loadgen samples", cache_dir=input_cache
    ) as loader:
        if loader.cached is not None:
            canvases, cached_meta = loader.cached
            return SampleLibrary(canvases, cached_meta, _ids(items), normalize=pre.normalize)
        inputs: np.ndarray | None = None
        meta: np.ndarray | None = None
        pos = 0
        for batch in loader:
            n = len(batch.image_ids)
            rows = batch.canvas if batch.canvas is not None else batch.inputs  # canvas: the cache is written
            if inputs is None or meta is None:
                inputs = np.empty((len(items), *rows.shape[1:]), rows.dtype)
                meta = np.empty((len(items), 6), np.float64)
            inputs[pos : pos + n], meta[pos : pos + n] = rows, batch.meta
            pos += n
    if inputs is None or meta is None:  # run_loadgen refuses an empty image list before this
        raise ConfigError("no images to query")
    return SampleLibrary(inputs, meta, _ids(items), normalize=pre.normalize if inputs.dtype == np.uint8 else None)


def _ids(items) -> np.ndarray:
    return np.array([it.image_id for it in items], np.int64)


class _Decoder:
    """Raw outputs -> detections (x1, y1, x2, y2, score, label float32 rows), non-finite rows dropped and counted
    (the run fails on any, as an accuracy run does): one array per image with `per_image` (accuracy mode: each
    sample's answer is logged), else the batch's rows as one array (a query is still answered with decoded
    detections; only nothing is logged)."""

    def __init__(self, variant, per_image: bool):
        self.decoder, self.cfg, self.per_image = get_decoder(variant.output), variant.decode_cfg, per_image
        self.faults: Counter = Counter()
        self._lock = threading.Lock()

    def __call__(self, outputs, meta):
        counts = output_faults(outputs, self.cfg)
        if counts:
            with self._lock:
                self.faults.update(counts)
        bi, boxes, scores, labels = self.decoder(outputs, meta, self.cfg)
        rows = np.empty((len(scores), logs.DETECTION_COLUMNS), np.float32)
        rows[:, :4], rows[:, 4], rows[:, 5] = boxes, scores, labels
        keep = np.isfinite(rows[:, :5]).all(axis=1)
        if not keep.all():
            rows, bi = rows[keep], np.asarray(bi)[keep]
        if not self.per_image:
            return rows
        bi = np.asarray(bi)
        if len(bi) > 1 and (np.diff(bi) < 0).any():  # the decoders give images in order; kept correct if not
            order = np.argsort(bi, kind="stable")
            rows, bi = rows[order], bi[order]
        return np.split(rows, np.searchsorted(bi, np.arange(1, len(meta))))


def _one_test(
    lg,
    p,
    library: SampleLibrary,
    runners: list,
    decoder: _Decoder,
    scenario: str,
    mode: str,
    settings: dict,
    log_dir: Path,
) -> tuple[dict, dict, object]:
    """One LoadGen test: (its detail log's keys, the SUT's own overhead, the TestSettings)."""
    log_dir.mkdir(parents=True)
    ts = to_test_settings(lg, scenario, mode, settings, len(library))
    replays = p.backend.capabilities.replays
    infers = [lambda x, ids, r=r: run_infer(r, x, ids) for r in runners]
    sut = BatchingSUT(
        library,
        infers,
        decoder,
        p.runner.static_batch or p.request.batch_size,
        lg.QuerySamplesComplete,
        _response_maker(lg),
        max_wait_s=settings.get("max_wait_ms", 0.0) / 1000 if scenario == "Server" else 0.0,
        log_data=mode == "accuracy",
        needs_inputs=not replays,
    )
    lg_sut = lg.ConstructSUT(sut.issue_queries, sut.flush_queries)
    lg_qsl = lg.ConstructQSL(len(library), ts.performance_sample_count_override, library.load, library.unload)
    log = lg.LogSettings()
    log.log_output.outdir = str(log_dir)
    log.log_output.copy_summary_to_stdout = False
    log.enable_trace = False
    try:
        lg.StartTestWithLogSettings(lg_sut, lg_qsl, ts, log)
    finally:
        sut.close()
        lg.DestroyQSL(lg_qsl)
        lg.DestroySUT(lg_sut)
    if sut.error is not None:
        raise sut.error
    return logs.read_detail(log_dir), sut.overhead(), ts


def _response_maker(lg):
    def response(sample_id, rows):
        if rows is None or not len(rows):
            return lg.QuerySampleResponse(sample_id, 0, 0)
        return lg.QuerySampleResponse(sample_id, rows.ctypes.data, rows.nbytes)

    return response


def _log_dir_name(p, lg_cfg: LoadgenConfig) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    parts = [
        stamp,
        p.variant.model,
        p.variant.name,
        p.backend.name,
        p.backend.device(),
        p.asked.precision,
        f"bs{p.asked.batch_size}",
        lg_cfg.scenario,
        lg_cfg.mode,
    ]
    return "_".join(_slug(x) for x in parts) + ".loadgen"


def _search(
    lg, p, library, runners, decoder, lg_cfg, settings: dict, root: Path
) -> tuple[tuple[dict, dict, object, dict], list[dict]]:
    """Server: the highest target QPS whose run is valid, in at most search_tries runs (each recorded)."""
    qps = settings.get("target_qps")
    if not qps:
        raise ConfigError("--find-peak-qps needs a first QPS to try: --target-qps or the spec's loadgen target_qps")
    lo: float | None = None
    hi: float | None = None
    tries: list[dict] = []
    best: tuple[dict, dict, object, dict] | None = None
    for k in range(lg_cfg.search_tries):
        s = {**settings, "target_qps": qps}
        detail, overhead, ts = _one_test(
            lg, p, library, runners, decoder, "Server", "performance", s, root / f"try{k + 1}_qps{qps:.3f}"
        )
        res = logs.results(detail, "Server")
        tries.append(
            {
                "target_qps": qps,
                "valid": res["valid"],
                "qps": res["qps"],
                "p99_ms": res["p99_ms"],
                "reasons": res["reasons"],
                "log_dir": f"try{k + 1}_qps{qps:.3f}",
            }
        )
        if res["valid"]:
            lo = qps
            best = (res, overhead, ts, s)
        else:
            hi = qps
        if lo is not None and hi is not None:
            if hi - lo <= 0.02 * hi:  # within 2 %: further tries would not change the answer
                break
            qps = (lo + hi) / 2
        elif lo is not None:
            qps = lo * 2
        elif hi is not None:
            qps = hi / 2
    if best is None:  # none valid: the last try is the result, reported invalid
        s = {**settings, "target_qps": tries[-1]["target_qps"]}
        detail = logs.read_detail(root / tries[-1]["log_dir"])
        best = (logs.results(detail, "Server"), overhead, ts, s)
    return best, tries


def run_loadgen(cfg: RunConfig, lg_cfg: LoadgenConfig, publish=None) -> dict:
    """A LoadGen scenario run; `publish(record)` as in run_accuracy. LoadGen's logs are kept in a folder of the
    results dir named in the record (`loadgen.log_dir`); a run that fails leaves none behind."""
    lg = import_loadgen()
    check_outputs(outputs_request(cfg), accuracy=False)
    caps = backend_class(cfg.backend).capabilities
    streams, workers = parallelism(cfg.streams, cfg.workers, caps)
    if not cfg.streams and not caps.host_compute:
        streams = 2  # an accelerator: one SUT thread gathers / decodes / answers while the other's batch runs
    cfg = dataclasses.replace(cfg, streams=streams, workers=workers)
    remember = EngineCache(cfg.cache_dir) if cfg.cache_dir else None
    variant = load_model(cfg.model, remember).variant(cfg.variant)
    section = read_loadgen_section(variant.loadgen_section, variant.source, f"variants.{variant.name}.loadgen")
    settings = resolve(lg_cfg, section.settings_for(lg_cfg.scenario))
    dataset = dataset_request(cfg)
    try:
        images_dir, ann_file = dataset.resolve(variant.annotation)
    except (ConfigError, InputError) as exc:
        if lg_cfg.mode != "performance" or dataset.annotation:  # a named --ann that is missing stays an error
            raise
        # performance mode times pixels and evaluates nothing: without the spec's annotation file (the README's
        # DATASETS_DIR has none of that name) the images dir's files serve, as in a performance run
        images_dir = dataset.images()
        items = folder_items(images_dir, cfg.max_images)
        annotations, source = None, f"none ({first_line(exc)})"
    else:
        annotations = read_annotations(ann_file, polygons=False, remember=remember)
        items = image_items(annotations, images_dir, cfg.max_images)
        source = str(ann_file)
        if not items:
            raise ConfigError("no images to query", ann_file)
    evaluator = (
        CocoEvaluator(
            annotations, variant.label_map, variant.categories, cfg.evaluator or "faster-coco-eval", source=source
        )
        if lg_cfg.mode == "accuracy" and annotations is not None  # accuracy mode always has them (raised above)
        else None
    )
    pre = Preprocessor(variant.preprocess, variant.height, variant.width)
    # forks its decoding workers before the runtime's threads
    library = _library(items, pre, cfg.batch_size, workers, cfg.progress, cfg.input_cache)
    engine = engine_request(cfg)
    p = prepare(engine, variant, onnx_path=resolve_onnx(engine, variant))
    runners = (
        [p.runner] * streams
        if p.runner.concurrent
        else [p.runner] + [p.backend.load(p.engine, p.request) for _ in range(streams - 1)]
    )
    decoder = _Decoder(variant, per_image=lg_cfg.mode == "accuracy")
    name = _log_dir_name(p, lg_cfg)
    tmp = Path(cfg.results_dir) / f".{name}.tmp"
    final = Path(cfg.results_dir) / name
    t0 = time.perf_counter()
    try:
        if lg_cfg.find_peak_qps:
            (res, overhead, ts, settings), tries = _search(lg, p, library, runners, decoder, lg_cfg, settings, tmp)
        else:
            detail, overhead, ts = _one_test(
                lg, p, library, runners, decoder, lg_cfg.scenario, lg_cfg.mode, settings, tmp
            )
            # accuracy mode measures nothing: LoadGen logs no result, only the answers
            res = (
                logs.results(detail, lg_cfg.scenario)
                if lg_cfg.mode == "performance"
                else {"valid": None, "validity": None, "reasons": []}
            )
            tries = None
        metrics, targets, reasons = {}, [], []
        if evaluator is not None:  # accuracy mode
            indices, dets = logs.read_accuracy_log(tmp)
            metrics = _evaluate(evaluator, library, indices, dets, variant)
            targets = p.variant.targets_for(p.backend.name, p.backend.device(), cfg.precision, cfg.batch_size)
            if len(np.unique(indices)) != len(library):
                reasons.append(f"LoadGen's accuracy log holds {len(np.unique(indices))} of the {len(library)} samples")
        else:
            metrics = logs.metric_values(res)
            targets = section.targets_for(
                lg_cfg.scenario, p.backend.name, p.backend.device(), cfg.precision, cfg.batch_size
            )
            if not res["valid"]:
                reasons.append("LoadGen: result INVALID: " + ("; ".join(res["reasons"]) or "no reason logged"))
        reasons += fault_reasons(decoder.faults)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    wall = time.perf_counter() - t0
    section_out = {
        "scenario": lg_cfg.scenario,
        "mode": lg_cfg.mode,
        "short": lg_cfg.short,
        "mlperf_result": False if lg_cfg.short else None,
        "note": NOT_MLPERF
        if lg_cfg.short
        else "settings from MLPerf's rules (LoadGen's mlperf.conf, retinanet) "
        "unless overridden; a submission also needs its audit tests",
        **res,
        "settings": settings,
        "test_settings": effective(ts),
        "sut": overhead,
        "search": tries,
        "loadgen_version": _version(),
        "log_dir": str(final),
        "logs": sorted(f.name for f in final.iterdir() if f.is_file()),
        "streams": streams,
        "simulated_device_s": p.runner.simulated_device_s,
        "wall_s": wall,
    }
    checks, target_reasons = check_targets(metrics, targets)
    reasons += target_reasons
    record = new_record(
        "loadgen",
        **_base_fields(p),
        dataset={"images_dir": str(images_dir), "annotation": source, "num_images": len(items)},
        loadgen=section_out,
        metrics=metrics,
        targets=[t.as_dict() for t in targets],
        checks=checks,
        verdict=verdict_of(checks, reasons),
        reasons=reasons,
    )
    if publish is not None:
        publish(record)
    return record


def _evaluate(evaluator: CocoEvaluator, library: SampleLibrary, indices, dets, variant) -> dict:
    """The 12 COCO stats of the detections LoadGen logged (each sample once; its first answer counts)."""
    seen = set()
    for i, rows in zip(indices.tolist(), dets):
        if i in seen:
            continue
        seen.add(i)
        if len(rows):
            row_ids = np.full(len(rows), library.image_ids[i], np.int64)
            evaluator.add(row_ids, rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64))
    ids = [int(library.image_ids[i]) for i in sorted(seen)]
    evaluator.complete(ids)
    return evaluator.evaluate(ids)


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlcommons-loadgen")
    except PackageNotFoundError:
        return None


def format_loadgen(record: dict) -> str:
    """The run's LoadGen lines for the command's output."""
    s = record["loadgen"]
    lines = [
        f" LoadGen {s['scenario']} {s['mode']}: "
        + (
            f"result {s['validity'] or 'none'}"
            if s["mode"] == "performance"
            else "every sample once, its answers evaluated"
        )
        + (" (short CI mode: not an MLPerf result)" if s["short"] else "")
    ]
    for r in s["reasons"]:
        lines.append(f"   invalid: {r}")
    if s["mode"] == "performance":
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(
            f"   {fmt(s['qps'])} samples/s; latency ms mean {fmt(s['mean_ms'])} p50 {fmt(s['p50_ms'])} "
            f"p90 {fmt(s['p90_ms'])} p99 {fmt(s['p99_ms'])} ({s['queries']} queries)"
        )
        if s["early_stopping"].get("text"):
            lines.append(f"   early stopping: {s['early_stopping']['text']}")
    if s.get("search"):
        for k, t in enumerate(s["search"], 1):
            lines.append(
                f"   try {k}: target {t['target_qps']:.3f} QPS -> {'valid' if t['valid'] else 'INVALID'}"
                f", {t['qps'] or 0:.3f} samples/s, p99 {t['p99_ms'] or 0:.3f} ms"
            )
    o = s["sut"]
    if o.get("samples"):
        lines.append(
            f"   SUT: {o['batches']} batches of {o['mean_batch']:.2f} samples, "
            f"{o['harness_us_per_sample']:.1f} us/sample outside the runner"
        )
    lines.append(f"   LoadGen logs: {s['log_dir']}")
    return "\n".join(lines)
