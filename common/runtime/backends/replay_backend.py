"""Replay: serves the raw outputs an earlier accuracy run recorded (--record-outputs) for the same model,
preprocessing and images. It measures the harness alone and re-evaluates other decode settings without a device.

With a device rate (--replay-fps F, backend option `replay_fps`) it also simulates the device's time: one device
processing one batch at a time, each call occupying it for batch_size / F seconds (the engine's batch: a padded
last batch costs a full one, as on a static-batch accelerator). Requests from several streams queue behind each
other. The wait is a sleep until the batch's completion deadline, computed from when the device becomes free, so
it uses no host CPU, does not drift with the sleeps' own lateness, and "does the harness keep up with a device of
F images/s?" can be answered on any machine: the run's wall time against `simulated_device_s`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from common.errors import ConfigError
from common.runtime.backends.base import Backend, BackendFlag, BuildRequest, Capabilities, Runner
from common.runtime.replay import Recording


class SimulatedDevice:
    """A device that finishes each batch `seconds_per_batch` after it started it, one batch at a time."""

    def __init__(self, seconds_per_batch: float, clock=time.perf_counter, sleep=time.sleep):
        self.seconds_per_batch = seconds_per_batch
        self.clock, self.sleep = clock, sleep
        self._lock = threading.Lock()
        self._free_at = 0.0
        self.batches = 0
        self.busy_s = 0.0

    def run_batch(self):
        with self._lock:
            now = self.clock()
            done_at = max(now, self._free_at) + self.seconds_per_batch
            self._free_at = done_at
            self.batches += 1
            self.busy_s += self.seconds_per_batch
        while True:  # a sleep may end early (signal) or late (load); only the deadline counts
            left = done_at - self.clock()
            if left <= 0:
                return
            self.sleep(left)


class ReplayRunner(Runner):
    concurrent = True  # serves read-only recorded arrays

    def __init__(self, recording: Recording, device: SimulatedDevice | None = None):
        self.recording = recording
        self.device = device
        self.output_names = list(recording.outputs)

    @property
    def simulated_device_s(self) -> float | None:
        """Seconds the simulated device was busy (None without --replay-fps)."""
        return None if self.device is None else self.device.busy_s

    def infer(self, x, image_ids=None) -> dict:
        """The recorded outputs of image_ids (accuracy runs only), after the simulated device's batch time when
        there is one."""
        if image_ids is None:
            raise ConfigError("the replay backend serves accuracy runs only (it needs the images' ids)")
        out = self.recording.batch(image_ids)
        if self.device is not None:
            self.device.run_batch()
        return out


def _images_per_s(text: str) -> float:
    fps = float(text)
    if not fps > 0 or fps == float("inf"):
        raise ValueError(f"expected a positive number, got {text!r}")
    return fps


class ReplayBackend(Backend):
    name = "replay"
    capabilities = Capabilities(
        precisions=("fp32", "fp16", "int8"),
        devices=("replay",),
        dynamic_batch=True,
        device_timer=False,
        host_compute=False,
        replays=True,
    )
    flags = (
        BackendFlag("--replay-dir", "replay_dir", "replay backend: the recording to serve", metavar="DIR"),
        BackendFlag(
            "--replay-fps",
            "replay_fps",
            "replay backend: also simulate a device of F images/s (each "
            "batch waits bs/F s on one shared device clock, using no CPU)",
            _images_per_s,
            metavar="F",
            shown="off: serve as fast as the harness asks",
        ),
    )

    def runtime_version(self) -> str:
        """replay-1: part of the engine key."""
        return "replay-1"

    def _dir(self) -> Path:
        directory = self.options.get("replay_dir")
        if not directory:
            raise ConfigError("the replay backend needs --replay-dir (a directory written by --record-outputs)")
        return Path(directory)

    def _fps(self) -> float:
        fps = self.options.get("replay_fps") or 0
        try:
            fps = float(fps)
        except (TypeError, ValueError):
            raise ConfigError(f"--replay-fps must be a number of images per second, got {fps!r}") from None
        if fps < 0 or fps != fps or fps == float("inf"):
            raise ConfigError(
                f"--replay-fps must be a positive number of images per second (0 = no device time), got {fps}"
            )
        return fps

    def build(self, req: BuildRequest):
        """(the --replay-dir recording, True): nothing is built."""
        return self._dir(), True

    def load(self, engine: Path, req: BuildRequest) -> Runner:
        """A runner serving the recording, checked against this ONNX and preprocessing; with --replay-fps
        every runner shares one simulated device."""
        recording = Recording(engine)
        recording.check(req.onnx_sha256, req.options["preprocess_key"])
        fps = self._fps()
        if fps and getattr(self, "_device", None) is None:  # every runner of this backend shares the one device
            self._device = SimulatedDevice(req.batch_size / fps)
        return ReplayRunner(recording, self._device if fps else None)


BACKEND = ReplayBackend
