"""End-to-end latency of a performance run: JPEG read + decode, preprocessing, inference and output decoding
of real images, per batch, in the calling thread. The compute-only figure (the engine alone) is timed apart, so a
record shows what the device does and what a user of the whole pipeline gets."""

from __future__ import annotations

import numpy as np

from common.data.coco import ImageItem, read_image
from common.data.preprocess import Preprocessor
from common.decode.outputs import get_decoder
from common.harness.timing import TimingStats, measure, summarize

# After warm-up: at least E2E_MIN_ITERS iterations and E2E_MIN_S seconds (or the run's minimum duration if
# shorter), at most E2E_MAX_ITERS iterations
# (JPEG decoding dominates and varies little; a CPU batch of 32 takes over a second).
E2E_MIN_ITERS, E2E_MIN_S, E2E_MAX_ITERS = 5, 2.0, 20
E2E_IMAGES = 64  # distinct images cycled through, so one cached image is not timed over and over


def measure_end_to_end(
    runner, variant, items: list[ImageItem], batch_size: int, warmup_s: float, min_duration_s: float
) -> TimingStats:
    pre = Preprocessor(variant.preprocess, variant.height, variant.width)
    decode_cfg = variant.decode_cfg
    decoder = get_decoder(decode_cfg)
    x = np.empty((batch_size, 3, variant.height, variant.width), np.float32)
    meta = [None] * batch_size
    state = {"next": 0}

    def step():
        for i in range(batch_size):
            item = items[state["next"] % len(items)]
            state["next"] += 1
            _, meta[i] = pre(read_image(item.path), out=x[i])
        outputs = runner.infer(x)
        decoder(outputs, np.stack(meta), decode_cfg)

    return measure(
        step,
        runner.sync,
        batch_size,
        warmup_iters=2,
        warmup_s=min(warmup_s, 1.0),
        min_iters=E2E_MIN_ITERS,
        min_duration_s=min(E2E_MIN_S, min_duration_s),
        max_iters=E2E_MAX_ITERS,
    )


def compute_time(runner, x: np.ndarray, engine_stats: TimingStats) -> dict:
    """The engine alone: the runtime's own device-side timer where it has one (IGIE / TVM time_evaluator: no
    host copies, no harness), else the timed runner calls (ONNX Runtime: the session run)."""
    samples = runner.device_time(x) if runner.device_timer else None
    if samples:
        return {"method": "time_evaluator", **summarize(samples, x.shape[0]).as_dict()}
    return {"method": "runner (session run)", **engine_stats.as_dict()}
