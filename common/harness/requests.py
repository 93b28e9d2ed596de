"""What each stage of a run is asked to do: small frozen requests, resolved once by a driver from its RunConfig.

The drivers (runs.py: accuracy and performance; devices.py; compare_command.py; loadgen_run.py) are the only code
that reads a RunConfig; every stage below them takes the request it needs, so a test builds one directly and runs
that stage alone. The dataset stage's request is common.data.coco.DatasetRequest (the data folder, below this one,
takes it too: the INT8 calibration set is checked against the evaluation set it locates).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field

from common.config.options import RunConfig, to_flags
from common.data.coco import DatasetRequest


@dataclass(frozen=True)
class EngineRequest:
    """Which ONNX (given, exported from a checkpoint, or the spec's), and the engine built from it and loaded
    (common/harness/engine.py)."""

    cache_dir: str  # engines, exports and remembered sha256 ("" : no cache of parsed files / hashes)
    precision: str = "fp32"
    batch_size: int = 1
    backend: str = "onnxruntime"
    device: str | None = None  # None: the backend's default device
    onnx: str | None = None
    checkpoint: str | None = None
    config: str | None = None  # the checkpoint's model config
    opset: int | None = None
    threads: int = 0  # runtime threads asked for; 0 = one share of the cores per stream, or the runtime's choice
    streams: int = 1  # runners that run at once (each gets its share of the cores)
    backend_options: dict = field(default_factory=dict)
    calib_dir: str | None = None  # int8: calibration images (never the evaluation set)
    calib_images: int | None = None  # int8: None = the spec's int8 calib_images
    dataset: DatasetRequest = DatasetRequest()  # the evaluation set, which calibration images must not be part of

    @property
    def runtime_threads(self) -> int:
        """The runtime's threads: the ones asked for, else a share of the cores when several streams run."""
        if self.threads:
            return self.threads
        return max(1, (os.cpu_count() or 1) // self.streams) if self.streams > 1 else 0

    def reference(self) -> EngineRequest:
        """The FP32 reference of this request: the backend whose capabilities say it is the reference, on its first
        device, running the same ONNX as it is, one stream at batch 1."""
        from common.runtime.backends import reference_backend

        cls = reference_backend()
        return dataclasses.replace(
            self,
            backend=cls.name,
            device=cls.capabilities.devices[0],
            precision="fp32",
            batch_size=1,
            backend_options={},
            streams=1,
        )


@dataclass(frozen=True)
class OutputsRequest:
    """Where a run writes (checked before any work, common/harness/runs.check_outputs)."""

    results_dir: str = "results"
    detections_out: str | None = None  # --save-detections
    record_outputs: str | None = None  # --record-outputs: raw outputs for the replay backend


@dataclass(frozen=True)
class EvaluationRequest:
    """How an accuracy run's detections are evaluated."""

    evaluator: str | None = None  # None: faster-coco-eval when installed (common/evaluate/metrics.py)
    bootstrap: int = 1000  # resamples of the stats' intervals; 0 = none


@dataclass(frozen=True)
class TimingRequest:
    """How a performance run times its engine (at the engine request's batch size and threads)."""

    warmup_s: float = 1.0
    min_duration_s: float = 5.0
    min_iters: int = 100
    progress: bool = True


@dataclass(frozen=True)
class StageRequests:
    """Every stage's request of one run, resolved once from its RunConfig."""

    engine: EngineRequest
    dataset: DatasetRequest
    outputs: OutputsRequest
    evaluation: EvaluationRequest
    timing: TimingRequest


def parallelism(streams: int | None, workers: int | None, caps) -> tuple[int, int]:
    """(streams, workers) of an accuracy run: the ones asked for (None: not asked), else what the backend's
    capabilities `caps` say.

    A runtime that computes on the host's cores already keeps every core busy (measured on 2 cores: decoding
    in-process beside two 1-thread sessions beat a separate decoding process); an accelerator leaves them free,
    so it decodes on every core but the parent's (~300 images/s each: a 2627 images/s device needs ~9).
    """
    cores = os.cpu_count() or 1
    streams = streams or (2 if caps.host_compute and cores >= 2 else 1)
    if workers is not None:
        return streams, workers
    return streams, max(0, min(4, cores - 2 * streams)) if caps.host_compute else max(1, cores - 1)


def dataset_request(cfg: RunConfig) -> DatasetRequest:
    """The dataset stage's request of a run."""
    return DatasetRequest(cfg.dataset_dir, cfg.annotation, cfg.images_dir, cfg.max_images)


def outputs_request(cfg: RunConfig) -> OutputsRequest:
    """Where a run writes."""
    return OutputsRequest(cfg.results_dir, cfg.detections_out, cfg.record_outputs)


def engine_request(cfg: RunConfig) -> EngineRequest:
    """The engine stage's request of a run (its streams as resolved by the driver; none asked: one)."""
    return EngineRequest(
        cache_dir=cfg.cache_dir,
        precision=cfg.precision,
        batch_size=cfg.batch_size,
        backend=cfg.backend,
        device=cfg.device,
        onnx=cfg.onnx,
        checkpoint=cfg.checkpoint,
        config=cfg.config,
        opset=cfg.opset,
        threads=cfg.threads,
        streams=cfg.streams or 1,
        backend_options=dict(cfg.backend_options),
        calib_dir=cfg.calib_dir,
        calib_images=cfg.calib_images,
        dataset=dataset_request(cfg),
    )


def stage_requests(cfg: RunConfig) -> StageRequests:
    """Every stage's request of the run `cfg` asks for."""
    return StageRequests(
        engine=engine_request(cfg),
        dataset=dataset_request(cfg),
        outputs=outputs_request(cfg),
        evaluation=EvaluationRequest(cfg.evaluator, cfg.bootstrap),
        timing=TimingRequest(cfg.warmup_s, cfg.min_duration_s, cfg.min_iters, cfg.progress),
    )


def request_key(cfg: RunConfig) -> str:
    """A worker's command as it matters for reusing its finished shard (common/harness/devices.py): how the work
    is spread over the host and where its extras go change no detection."""
    cfg = dataclasses.replace(
        cfg,
        streams=None,
        workers=None,
        progress=True,
        detections_out=None,
        input_cache=None,
        checkpoint_s=1.0,
        record_outputs=None,
        results_dir="results",
        devices=None,
    )
    flags = to_flags(cfg, "accuracy")
    return hashlib.sha256("\0".join(flags).encode()).hexdigest()[:32]
